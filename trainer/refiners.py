"""Topic refiners: who proposes the refined bilingual word sets of a refinement step.

One interface, `Refiner.refine(topics, rounds) -> answers[topic][round]`, each answer a
`ParsedAnswer` (words per language, already matched to the vocabularies). Backends:

  embedding     no LLM: words voted from bootstrap resamples around each topic's embedding
                centroid, with the nearest words of every language's vocabulary (the default)
  openai        any OpenAI-compatible endpoint (vllm serve, llama.cpp server, transformers
                serve, hosted APIs): K x R requests, bounded concurrency, timeouts, retries
  vllm          in-process vLLM engine: one batched `chat` call with n = R samples per topic
  transformers  a small local model through transformers (CPU is fine for tiny models)

Every LLM answer is cached on disk, keyed by backend, model, prompt, round and sampling
settings: a resumed or repeated run makes no new calls. Calls, tokens and seconds of each
refinement step are kept in `stats` (and end up in history.json / metrics.json).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from xtm.atomic import write_json
from xtm.errors import XtmError
from xtm.trainer.refine_prompt import ParsedAnswer, TopicWords, VocabMatcher, build_prompt, parse_answer

REFINER_NAMES = ("embedding", "openai", "vllm", "transformers")


@dataclass
class Sampling:
    """Sampling settings of LLM refiners (part of the cache key)."""

    temperature: float = 1.0
    top_p: float = 0.95
    max_tokens: int = 400
    seed: int = 0


@dataclass
class StepStats:
    """What one refinement step cost."""

    calls: int = 0
    cache_hits: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **kw: float) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in ("calls", "cache_hits", "failures", "prompt_tokens",
                                              "completion_tokens", "seconds")}


class Refiner(Protocol):
    name: str

    def refine(self, topics: list[TopicWords], rounds: int) -> tuple[list[list[ParsedAnswer]], StepStats]: ...


# --------------------------------------------------------------------------------------------
# Answer cache
# --------------------------------------------------------------------------------------------


class AnswerCache:
    """One small JSON file per (generator, prompt, round, sampling); written atomically."""

    def __init__(self, directory: Path | None) -> None:
        self.dir = Path(directory) / "llm-answers" if directory is not None else None

    @staticmethod
    def key(generator_id: str, prompt: str, round_index: int, sampling: Sampling) -> str:
        blob = json.dumps({"g": generator_id, "p": prompt, "r": round_index, "s": asdict(sampling)},
                          sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _path(self, key: str) -> Path:
        assert self.dir is not None
        return self.dir / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        if self.dir is None:
            return None
        p = self._path(key)
        try:
            return json.loads(p.read_text(encoding="utf-8"))["text"]
        except (OSError, ValueError, KeyError):
            return None

    def put(self, key: str, text: str) -> None:
        if self.dir is not None:
            write_json(self._path(key), {"text": text})


# --------------------------------------------------------------------------------------------
# Text generators (LLM backends) and the refiner that prompts them
# --------------------------------------------------------------------------------------------


class TextGenerator(Protocol):
    id: str

    def generate(self, prompts: list[str], rounds: int, sampling: Sampling,
                 stats: StepStats) -> list[list[str | None]]:
        """R answers per prompt (None where a request failed for good)."""
        ...


class LLMRefiner:
    """Prompts a text generator (with the answer cache in front) and parses its answers."""

    def __init__(self, generator: TextGenerator, matcher: VocabMatcher, n_words: int = 15,
                 sampling: Sampling | None = None, cache: AnswerCache | None = None) -> None:
        self.generator = generator
        self.name = generator.id
        self.matcher = matcher
        self.n_words = n_words
        self.sampling = sampling or Sampling()
        self.cache = cache or AnswerCache(None)

    def refine(self, topics: list[TopicWords], rounds: int) -> tuple[list[list[ParsedAnswer]], StepStats]:
        stats = StepStats()
        t0 = time.perf_counter()
        prompts = [build_prompt(t, self.matcher.langs, self.n_words) for t in topics]
        keys = [[AnswerCache.key(self.generator.id, p, r, self.sampling) for r in range(rounds)] for p in prompts]
        texts: list[list[str | None]] = [[self.cache.get(k) for k in ks] for ks in keys]
        todo = [i for i, row in enumerate(texts) if any(t is None for t in row)]
        stats.cache_hits = sum(t is not None for row in texts for t in row)
        if todo:
            fresh = self.generator.generate([prompts[i] for i in todo], rounds, self.sampling, stats)
            for i, answers in zip(todo, fresh, strict=True):
                for r, text in enumerate(answers):
                    if texts[i][r] is None and text is not None:
                        texts[i][r] = text
                        self.cache.put(keys[i][r], text)
        stats.failures = sum(t is None for row in texts for t in row)
        parsed = [[parse_answer(t, self.matcher, max_words=2 * self.n_words) for t in row] for row in texts]
        stats.seconds = time.perf_counter() - t0
        return parsed, stats


def chat_completions_url(url: str) -> str:
    """Accept http://host:port, http://host:port/v1 or the full .../chat/completions URL."""
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1"):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


class OpenAICompatibleGenerator:
    """K x R chat-completion requests to any OpenAI-compatible server, at most `concurrency` at once.

    Each round is its own request with its own seed (many servers ignore `n`). Transient
    failures (connection errors, timeouts, 429, 5xx) are retried with exponential backoff and
    jitter; a request that still fails yields None (the topic keeps its last good set). Errors
    that retrying cannot fix (401, 403, 404: wrong key, URL or model) stop with a clear message.
    The API key comes from an environment variable and is never logged.
    """

    def __init__(self, url: str, model: str, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8,
                 timeout: float = 120.0, retries: int = 4, backoff: float = 1.0) -> None:
        if not url:
            raise XtmError("--refiner openai needs --llm-url (e.g. http://127.0.0.1:8000/v1)")
        if not model:
            raise XtmError("--refiner openai needs --llm-model (the model name the server knows)")
        self.url = chat_completions_url(url)
        self.model = model
        self.id = f"openai:{model}"
        self._key = os.environ.get(api_key_env) or None
        self.concurrency = max(1, int(concurrency))
        self.timeout, self.retries, self.backoff = timeout, retries, backoff

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        req = urllib.request.Request(self.url, data=json.dumps(body).encode("utf-8"), headers=headers)
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            return json.loads(resp.read().decode("utf-8"))

    def _one(self, prompt: str, round_index: int, sampling: Sampling, stats: StepStats) -> str | None:
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                "temperature": sampling.temperature, "top_p": sampling.top_p,
                "max_tokens": sampling.max_tokens, "seed": sampling.seed + round_index, "stream": False}
        for attempt in range(self.retries + 1):
            stats.add(calls=1)
            try:
                out = self._post(body)
                text = out["choices"][0]["message"]["content"]
                usage = out.get("usage") or {}
                stats.add(prompt_tokens=int(usage.get("prompt_tokens") or 0),
                          completion_tokens=int(usage.get("completion_tokens") or 0))
                return text if isinstance(text, str) else None
            except urllib.error.HTTPError as e:
                if e.code in (401, 403, 404):
                    raise XtmError(f"the LLM server at {self.url} answered HTTP {e.code} ({e.reason}): check "
                                   "--llm-url, --llm-model and the API key variable") from e
                reason = f"HTTP {e.code}"
            except (urllib.error.URLError, TimeoutError, OSError, ValueError, KeyError, IndexError) as e:
                reason = type(e).__name__
            if attempt < self.retries:
                time.sleep(self.backoff * 2 ** attempt * (0.5 + random.random()))
        print(f"xtm-train: LLM request failed after {self.retries + 1} attempts ({reason}); "
              "the topic keeps its last refined set", file=sys.stderr)
        return None

    def generate(self, prompts: list[str], rounds: int, sampling: Sampling,
                 stats: StepStats) -> list[list[str | None]]:
        jobs = [(i, r) for i in range(len(prompts)) for r in range(rounds)]
        out: list[list[str | None]] = [[None] * rounds for _ in prompts]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            results = pool.map(lambda ir: self._one(prompts[ir[0]], ir[1], sampling, stats), jobs)
            for (i, r), text in zip(jobs, results, strict=True):
                out[i][r] = text
        return out


class VLLMGenerator:
    """In-process vLLM: every topic of a step in one batched `chat` call, n = R samples each.

    GPU only in practice; vLLM is imported here and nowhere else, so nothing else needs it.
    `engine` may be passed in (tests use a stand-in named FakeVLLMEngine, because no GPU is
    reachable there); otherwise `vllm.LLM(model, **engine_kwargs)` is built on first use.
    """

    def __init__(self, model: str, engine: Any = None, **engine_kwargs: Any) -> None:
        self.model = model
        self.id = f"vllm:{model}"
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

    def __init__(self, model: str, device: str = "cpu") -> None:
        self.model_name = model
        self.id = f"transformers:{Path(model).name}"
        self.device = device
        self._tok: Any = None
        self._lm: Any = None

    def _load(self) -> None:
        if self._lm is not None:
            return
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as e:
            raise XtmError("--refiner transformers needs `pip install transformers` (and `gguf` for "
                           ".gguf files)") from e
        path = Path(self.model_name)
        kw: dict[str, Any] = {}
        where = self.model_name
        if path.suffix == ".gguf":
            where, kw = str(path.parent), {"gguf_file": path.name}
        self._tok = AutoTokenizer.from_pretrained(where, **kw)
        self._lm = AutoModelForCausalLM.from_pretrained(where, **kw).to(self.device).eval()

    def generate(self, prompts: list[str], rounds: int, sampling: Sampling,
                 stats: StepStats) -> list[list[str | None]]:
        import torch

        self._load()
        out: list[list[str | None]] = []
        for i, prompt in enumerate(prompts):
            ids = self._tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                return_tensors="pt", return_dict=True).to(self.device)
            torch.manual_seed(sampling.seed + i)
            stats.add(calls=1, prompt_tokens=int(ids["input_ids"].shape[1]))
            with torch.no_grad():
                gen = self._lm.generate(**ids, do_sample=True, temperature=sampling.temperature,
                                        top_p=sampling.top_p, max_new_tokens=sampling.max_tokens,
                                        num_return_sequences=rounds, pad_token_id=self._tok.eos_token_id)
            new = gen[:, ids["input_ids"].shape[1]:]
            stats.add(completion_tokens=int((new != self._tok.eos_token_id).sum()))
            out.append([self._tok.decode(row, skip_special_tokens=True) for row in new])
        return out


# --------------------------------------------------------------------------------------------
# The LLM-free refiner
# --------------------------------------------------------------------------------------------


class EmbeddingRefiner:
    """Refined sets without an LLM, from multilingual word embeddings.

    Per topic and round: resample the topic's candidates (its top-N words in every language)
    with replacement and take the embedding centroid c of the resample. Per language, score
      - the topic's own deeper words (top 4N by beta: grounded in the corpus), and
      - the `neighbours` vocabulary words nearest to the OTHER languages' candidates (the
        cross-lingual coverage an LLM would add)
    by CSLS, 2 cos(w, c) - r(w), where r(w) is w's mean similarity to its 10 nearest topic
    centroids of this step. Without that hubness correction, short tokens that sit close to
    everything in sentence-encoder space ("ie", "nd", "yr") win every topic. Keep the n best.
    Self-consistency voting over the rounds then keeps what the resamples agree on, as it does
    for LLM answers. Deterministic for given candidates (seeded by them).
    """

    name = "embedding"
    HUB_K = 10

    def __init__(self, vocabs: dict[str, Sequence[str]], word_vectors: dict[str, np.ndarray],
                 n_words: int = 15, neighbours: int = 30, seed: int = 0) -> None:
        self.langs = list(vocabs)
        self.index = {lang: {w: i for i, w in enumerate(v)} for lang, v in vocabs.items()}
        self.vocabs = {lang: list(v) for lang, v in vocabs.items()}
        self.vectors = {lang: v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
                        for lang, v in word_vectors.items()}
        self.n_words, self.neighbours = n_words, neighbours
        self.seed = seed

    def _rows(self, lang: str, words: Sequence[str]) -> list[int]:
        return [self.index[lang][w] for w in words if w in self.index[lang]]

    def refine(self, topics: list[TopicWords], rounds: int) -> tuple[list[list[ParsedAnswer]], StepStats]:
        stats = StepStats()
        t0 = time.perf_counter()
        pools = [[(lang, j) for lang in self.langs for j in self._rows(lang, t.words.get(lang, []))] for t in topics]
        centroids = np.stack([self._centroid(pool) for pool in pools])
        hub = {}
        for lang in self.langs:
            sims = self.vectors[lang] @ centroids.T                       # [V, K]
            k = min(self.HUB_K, sims.shape[1])
            hub[lang] = np.sort(sims, axis=1)[:, -k:].mean(1)
        out = []
        for topic, pool in zip(topics, pools, strict=True):
            # Seeded by the candidates themselves: the same model state gives the same answers,
            # so a resumed run refines exactly as the uninterrupted one would.
            digest = hashlib.sha256(json.dumps([topic.topic, topic.words], ensure_ascii=False).encode()).digest()
            rng = np.random.default_rng([self.seed, int.from_bytes(digest[:8], "little")])
            answers = []
            for _ in range(rounds):
                if not pool:
                    answers.append(ParsedAnswer(words={lang: [] for lang in self.langs}))
                    continue
                sample = [pool[j] for j in rng.integers(0, len(pool), size=len(pool))]
                c = self._centroid(sample)
                answers.append(ParsedAnswer(words={lang: self._best(lang, c, sample, topic, hub[lang])
                                                   for lang in self.langs}))
            out.append(answers)
        stats.seconds = time.perf_counter() - t0
        return out, stats

    def _centroid(self, pool: Sequence[tuple[str, int]]) -> np.ndarray:
        d = next(iter(self.vectors.values())).shape[1]
        if not pool:
            return np.zeros(d, np.float32)
        c = np.mean([self.vectors[lang][j] for lang, j in pool], axis=0)
        return c / max(float(np.linalg.norm(c)), 1e-12)

    def _best(self, lang: str, c: np.ndarray, sample: Sequence[tuple[str, int]], topic: TopicWords,
              hub: np.ndarray) -> list[str]:
        own = self._rows(lang, (topic.more or topic.words).get(lang, []))
        cand = set(own)
        others = [j for x, j in sample if x != lang]
        if others and self.neighbours:
            other_c = self._centroid([(x, j) for x, j in sample if x != lang])
            csls_other = 2 * (self.vectors[lang] @ other_c) - hub
            cand |= set(np.argpartition(-csls_other, min(self.neighbours, len(hub) - 1))[: self.neighbours].tolist())
        if not cand:
            return []
        rows = np.fromiter(cand, dtype=np.int64)
        score = 2 * (self.vectors[lang][rows] @ c) - hub[rows]
        order = np.lexsort((rows, -score))[: self.n_words]
        return [self.vocabs[lang][int(rows[i])] for i in order]


# --------------------------------------------------------------------------------------------
# Construction from CLI settings
# --------------------------------------------------------------------------------------------


@dataclass
class RefinerConfig:
    backend: str = "embedding"
    llm_url: str | None = None
    llm_model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    timeout: float = 120.0
    retries: int = 4
    sampling: Sampling = field(default_factory=Sampling)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_refiner(cfg: RefinerConfig, vocabs: dict[str, Sequence[str]],
                 word_vectors: Callable[[], dict[str, np.ndarray]], n_words: int,
                 cache_dir: Path | None, seed: int = 0) -> Refiner:
    """The refiner a run asked for; `word_vectors` is called only by the embedding refiner."""
    if cfg.backend == "embedding":
        return EmbeddingRefiner(vocabs, word_vectors(), n_words=n_words, seed=seed)
    generator: TextGenerator
    if cfg.backend == "openai":
        generator = OpenAICompatibleGenerator(cfg.llm_url or "", cfg.llm_model or "", cfg.api_key_env,
                                              cfg.concurrency, cfg.timeout, cfg.retries)
    elif cfg.backend == "vllm":
        if not cfg.llm_model:
            raise XtmError("--refiner vllm needs --llm-model (a hub name or local path vLLM can load)")
        generator = VLLMGenerator(cfg.llm_model)
    elif cfg.backend == "transformers":
        if not cfg.llm_model:
            raise XtmError("--refiner transformers needs --llm-model (a local directory, hub name or .gguf file)")
        generator = TransformersGenerator(cfg.llm_model)
    else:
        raise XtmError(f"unknown refiner '{cfg.backend}': choose one of {', '.join(REFINER_NAMES)}")
    return LLMRefiner(generator, VocabMatcher(vocabs), n_words=n_words, sampling=cfg.sampling,
                      cache=AnswerCache(cache_dir))
