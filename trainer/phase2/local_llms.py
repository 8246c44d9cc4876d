"""The in-process LLM generators: vLLM and transformers, each imported only when its backend is used,
so that nothing else needs them installed.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xtm.config import Sampling
from xtm.errors import XtmError, exception_text

if TYPE_CHECKING:
    from xtm.trainer.phase2.refiners import StepStats

# Files whose bytes enter a local model directory's fingerprint (small: what the model is and how it is
# prompted); every other file there enters by name, size and modification time (the weights).
_FINGERPRINT_BYTES = ("config.json", "generation_config.json", "tokenizer_config.json", "chat_template.jinja")
_HEAD_BYTES = 2**20  # how much of a single model file (a .gguf: its header and metadata) is hashed


def model_cache_id(backend: str, model: str) -> str:
    """What a local backend's answers are cached under: `backend:model` for a hub name (the full name: the
    organisation is part of it), and for a local directory or file `backend:<base name>@<hash>`, the hash
    over its resolved absolute path and its content's fingerprint. Two models in sibling directories with
    one base name, or a checkpoint overwritten at the same path, are then two keys. The fingerprint is
    cheap: the bytes of a directory's small configuration files and every top-level file's name, size and
    modification time; a file's size, modification time and the hash of its first MiB."""
    path = Path(model)
    try:
        st = path.stat()
    except (OSError, ValueError):  # nothing here (ValueError: a NUL in the name): a hub name
        return f"{backend}:{model}"
    h = hashlib.sha256()
    h.update(os.fsencode(str(path.resolve())) + b"\0")
    try:
        if stat.S_ISDIR(st.st_mode):
            _fingerprint_dir(path, h)
        else:
            h.update(f"{st.st_size}\0{st.st_mtime_ns}\0".encode())
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    h.update(f.read(_HEAD_BYTES))
    except OSError as e:  # unreadable: the load reports it; the path alone still tells models apart
        h.update(f"unreadable {e.errno}".encode())
    return f"{backend}:{path.resolve().name or model}@{h.hexdigest()[:24]}"


def _fingerprint_dir(directory: Path, h: Any) -> None:
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        try:
            st = entry.stat()  # links followed: a hub snapshot's files are links to its blobs
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        h.update(os.fsencode(entry.name) + f"\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        if entry.name in _FINGERPRINT_BYTES and st.st_size <= _HEAD_BYTES:
            with open(entry.path, "rb") as f:
                h.update(f.read(_HEAD_BYTES) + b"\0")


def _prompt_seed(seed: int, prompt: str) -> int:
    """The sampling seed of one prompt: from the run's LLM seed and the prompt's text, so a prompt gets the same
    seed whichever other prompts were cached (an index among the uncached ones depended on that)."""
    digest = hashlib.sha256(f"{seed}\0{prompt}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # 63 bits: every torch generator takes it


@contextmanager
def _own_rng(torch: Any, device: str, seed: int) -> Iterator[None]:
    """Sampling's random numbers from `seed`, inside a fork of the global RNG: the states of the CPU generator
    and of the model's device are restored after, so training's random stream does not depend on whether
    (or what) the LLM generated. transformers' generate takes no generator argument; it draws from these."""
    dev = torch.device(device)
    if dev.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            yield
        return
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[index], device_type="cuda"):
            torch.random.default_generator.manual_seed(seed)
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
            yield
        return
    with torch.random.fork_rng(device_type=dev.type):  # mps, xpu, ...: every device of that type
        torch.random.default_generator.manual_seed(seed)
        module = getattr(torch, dev.type, None)
        if hasattr(module, "manual_seed"):
            module.manual_seed(seed)
        yield


class VLLMGenerator:
    """In-process vLLM: the topics of a step in batched `chat` calls (prompts_per_call each), n = R samples each.

    GPU only in practice; vLLM is imported here and nowhere else, so nothing else needs it.
    `engine` may be passed in (tests use a stand-in named FakeVLLMEngine, because no GPU is
    reachable there); otherwise `vllm.LLM(model, **engine_kwargs)` is built on first use.
    """

    # Topics per batched call: vLLM's throughput needs a batch, and a Ctrl-C loses at most one slice's answers
    # (seconds on a GPU) instead of the whole step's.
    prompts_per_call = 64

    def __init__(self, model: str, engine: Any = None, **engine_kwargs: Any) -> None:
        self.model = model
        self.id = f"vllm:{model}"
        self.cache_id = model_cache_id("vllm", model)
        self._engine = engine
        self._engine_kwargs = engine_kwargs

    def _llm(self) -> Any:
        if self._engine is None:
            try:
                from vllm import LLM
            except ImportError as e:
                raise XtmError("--refiner vllm needs vLLM (`pip install 'xtm[vllm]'`, Linux + CUDA GPU); "
                               "without a GPU use --refiner openai with any OpenAI-compatible server, "
                               "or --refiner embedding") from e
            self._engine = LLM(model=self.model, **self._engine_kwargs)
        return self._engine

    @staticmethod
    def sampling_params(rounds: int, sampling: Sampling) -> Any:
        try:
            from vllm import SamplingParams
        except ImportError:
            return {"n": rounds, "temperature": sampling.temperature, "top_p": sampling.top_p,
                    "max_tokens": sampling.max_tokens, "seed": sampling.seed}
        return SamplingParams(n=rounds, temperature=sampling.temperature, top_p=sampling.top_p,
                              max_tokens=sampling.max_tokens, seed=sampling.seed)

    def generate(self, prompts: list[str], rounds: int, sampling: Sampling,
                 stats: StepStats) -> list[list[str | None]]:
        llm = self._llm()
        conversations = [[{"role": "user", "content": p}] for p in prompts]
        stats.add(calls=1)
        outputs = llm.chat(conversations, self.sampling_params(rounds, sampling), use_tqdm=False)
        result: list[list[str | None]] = []
        for req in outputs:
            stats.add(prompt_tokens=len(getattr(req, "prompt_token_ids", None) or []))
            texts: list[str | None] = []
            for o in req.outputs[:rounds]:
                stats.add(completion_tokens=len(getattr(o, "token_ids", None) or []))
                texts.append(o.text)
            result.append(texts + [None] * (rounds - len(texts)))
        return result


class TransformersGenerator:
    """A small local chat model through transformers (a directory, hub name, or a .gguf file)."""

    # One prompt at a time (it generates them one by one anyway): each answer is cached as it comes.
    prompts_per_call = 1

    def __init__(self, model: str, device: str = "cpu") -> None:
        self.model_name = model
        self.id = f"transformers:{Path(model).name}"  # what reports name it
        self.cache_id = model_cache_id("transformers", model)  # what tells two models apart
        self.device = device
        self._tok: Any = None
        self._lm: Any = None

    def _where(self) -> tuple[str, dict[str, Any]]:
        """What from_pretrained takes: a directory or hub name, or a .gguf file's directory and name."""
        path = Path(self.model_name)
        if path.suffix == ".gguf":
            return str(path.parent), {"gguf_file": path.name}
        return self.model_name, {}

    def _transformers(self) -> Any:
        try:
            import transformers
        except ImportError as e:
            raise XtmError("--refiner transformers needs `pip install transformers` (and `gguf` for "
                           ".gguf files)") from e
        return transformers

    def _cannot_load(self, e: Exception) -> XtmError:
        return XtmError(f"--llm-model '{self.model_name}' cannot be loaded by transformers: {exception_text(e)}")

    def check(self) -> TransformersGenerator:
        """Read the model's configuration only (make_refiner does, so a wrong --llm-model stops a run before
        phase 1, not after it); the weights load at the first answer not in the cache, so they take no
        memory during phase 1, and a run whose answers are all cached never loads them."""
        transformers = self._transformers()
        where, kw = self._where()
        try:
            transformers.AutoConfig.from_pretrained(where, **kw)
        except Exception as e:  # OSError, ValueError, JSONDecodeError, ...: transformers raises many kinds
            raise self._cannot_load(e) from None
        return self

    def _load(self) -> None:
        if self._lm is not None:
            return
        transformers = self._transformers()
        where, kw = self._where()
        try:
            self._tok = transformers.AutoTokenizer.from_pretrained(where, **kw)
            self._lm = transformers.AutoModelForCausalLM.from_pretrained(where, **kw).to(self.device).eval()
        except Exception as e:
            raise self._cannot_load(e) from None

    def generate(self, prompts: list[str], rounds: int, sampling: Sampling,
                 stats: StepStats) -> list[list[str | None]]:
        import torch

        self._load()
        # Temperature 0 is greedy decoding (transformers refuses do_sample with it): one answer per
        # prompt, the same for every round, as a server answers a greedy request.
        greedy = sampling.temperature <= 0
        out: list[list[str | None]] = []
        for prompt in prompts:
            ids = self._tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                return_tensors="pt", return_dict=True).to(self.device)
            stats.add(calls=1, prompt_tokens=int(ids["input_ids"].shape[1]))
            with torch.no_grad(), _own_rng(torch, self.device, _prompt_seed(sampling.seed, prompt)):
                how = {"do_sample": False} if greedy else {
                    "do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p,
                    "num_return_sequences": rounds}
                gen = self._lm.generate(**ids, **how, max_new_tokens=sampling.max_tokens,
                                        pad_token_id=self._tok.eos_token_id)
            new = gen[:, ids["input_ids"].shape[1]:]
            stats.add(completion_tokens=int((new != self._tok.eos_token_id).sum()))
            texts = [self._tok.decode(row, skip_special_tokens=True) for row in new]
            out.append(texts * rounds if greedy else texts)
        return out
