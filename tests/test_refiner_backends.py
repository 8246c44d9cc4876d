"""Refiner backends: the OpenAI-compatible client against a local HTTP server that injects failures
(retries, fatal auth errors, concurrency bound, key handling), the answer cache, the vLLM path, and the
transformers backend's cache key and random numbers (with tiny random Llama models built here, never
downloaded).

The vLLM engine needs a GPU, which tests cannot reach: `FakeVLLMEngine` stands in for it at that
boundary only, to check that one refinement step is one batched `chat` call with n = R.
"""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
from command_logging import train_stderr  # noqa: F401  (a fixture)

from xtm.config import Phase2Config, Sampling, default_of
from xtm.errors import XtmError
from xtm.trainer.phase2.answer_cache import AnswerCache
from xtm.trainer.phase2.answer_parser import VocabMatcher
from xtm.trainer.phase2.llm_http import OpenAICompatibleGenerator, chat_completions_url
from xtm.trainer.phase2.local_llms import TransformersGenerator, VLLMGenerator
from xtm.trainer.phase2.objective import vote
from xtm.trainer.phase2.prompt import TopicWords
from xtm.trainer.phase2.refiners import LLMRefiner, StepStats

# The client logs its warnings; stderr shows them as xtm-train does, which is what "not in the log" means.
pytestmark = pytest.mark.usefixtures("train_stderr")

VOCABS = {"en": ["player", "team", "market", "profit"], "zh": ["球员", "球队", "市场", "利润"]}
TOPICS = [TopicWords(0, {"en": ["player", "team"], "zh": ["球员", "球队"]}),
          TopicWords(1, {"en": ["market", "profit"], "zh": ["市场", "利润"]})]


class ScriptedServer:
    """An OpenAI-compatible chat endpoint on 127.0.0.1 whose status codes follow a script."""

    def __init__(self, statuses: list[int] | None = None, delay: float = 0.0, answer=None) -> None:
        self.statuses = list(statuses or [])
        self.answer = answer  # body -> answer text (default: the scripted two-topic answers below)
        self.delay = delay
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    outer.requests.append(body)
                    outer.headers.append(dict(self.headers))
                    status = outer.statuses.pop(0) if outer.statuses else 200
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                time.sleep(outer.delay)
                with lock:
                    outer.in_flight -= 1
                if status != 200:
                    self.send_response(status)
                    self.end_headers()
                    return
                topic = "market" if "market" in body["messages"][0]["content"] else "player"
                text = (f"Topic: x\nEN: {topic} - team\nZH: 球员 - seed{body['seed']}" if topic == "player"
                        else "EN: market - profit\nZH: 市场 - 利润")
                if outer.answer is not None:
                    text = outer.answer(body)
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}],
                                      "usage": {"prompt_tokens": 10, "completion_tokens": 5}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.fixture
def server():
    made = []

    def make(**kw) -> ScriptedServer:
        made.append(ScriptedServer(**kw))
        return made[-1]

    yield make
    for s in made:
        s.close()


def refiner(url: str, tmp_path, **kw) -> LLMRefiner:
    gen = OpenAICompatibleGenerator(url, "some-model", backoff=0.01, **kw)
    return LLMRefiner(gen, VocabMatcher(VOCABS), n_words=5, sampling=Sampling(max_tokens=50, seed=7),
                      cache=AnswerCache(tmp_path))


def test_url_forms() -> None:
    assert chat_completions_url("http://h:1") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("http://h:1/v1/chat/completions") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("http://h:1/v1/?api-version=2") == "http://h:1/v1/chat/completions?api-version=2"


def test_k_times_r_requests_each_round_its_own_seed_then_all_cached(server, tmp_path) -> None:
    s = server()
    answers, stats = refiner(s.url, tmp_path).refine(TOPICS, rounds=3)
    assert stats.calls == 6 and stats.completion_tokens == 30 and stats.failures == 0
    assert sorted(r["seed"] for r in s.requests) == [7, 7, 8, 8, 9, 9]
    assert all(r["model"] == "some-model" and r["max_tokens"] == 50 for r in s.requests)
    assert answers[1][0].words == {"en": ["market", "profit"], "zh": ["市场", "利润"]}
    assert answers[0][2].dropped == 1                    # "seed9" is in no vocabulary
    again, stats2 = refiner(s.url, tmp_path).refine(TOPICS, rounds=3)
    assert stats2.calls == 0 and stats2.cache_hits == 6 and len(s.requests) == 6
    assert [[a.words for a in row] for row in again] == [[a.words for a in row] for row in answers]


def test_the_public_codes_sampling_20_words_asked_and_the_15_most_voted_kept(server, tmp_path) -> None:
    """Issue 15: by default a request samples at temperature 0.7, top_p 0.7 and asks for 20 words per
    language (the public LLM-XTM code); the vote keeps the 15 most frequent of what the rounds named."""
    en, zh = [f"word{chr(97 + i)}" for i in range(24)], [f"词{chr(0x4e00 + i)}" for i in range(24)]

    def answer(body: dict) -> str:  # round r names words r .. r + 19: the middle ones win the vote
        r = body["seed"] - 7
        return "EN: " + " - ".join(en[r:r + 20]) + "\nZH: " + " - ".join(zh[r:r + 20])

    s = server(answer=answer)
    gen = OpenAICompatibleGenerator(s.url, "some-model", backoff=0.01)
    r = LLMRefiner(gen, VocabMatcher({"en": en, "zh": zh}), sampling=Sampling(seed=7), cache=AnswerCache(tmp_path))
    topic = TopicWords(0, {"en": en[:15], "zh": zh[:15]})
    answers, stats = r.refine([topic], rounds=5)
    assert stats.calls == 5 and all(a.usable for a in answers[0])
    assert all((q["temperature"], q["top_p"]) == (0.7, 0.7) for q in s.requests)
    prompt = s.requests[0]["messages"][0]["content"]
    assert "Return exactly 20 words per language" in prompt and "word20" in prompt
    assert all(len(a.words["en"]) == 20 and len(a.words["zh"]) == 20 for a in answers[0])
    kept = vote(answers[0], ["en", "zh"], default_of(Phase2Config, "refined_words"))
    assert kept.words["en"] == en[4:19] and kept.counts["en"] == [5] * 15   # named by all five rounds
    assert kept.words["zh"] == zh[4:19]


def test_transient_failures_are_retried(server, tmp_path) -> None:
    s = server(statuses=[503, 429])
    _, stats = refiner(s.url, tmp_path, concurrency=1).refine(TOPICS[:1], rounds=1)
    assert stats.calls == 3 and stats.failures == 0


def test_a_request_that_keeps_failing_yields_an_unusable_answer_not_a_crash(server, tmp_path, capsys) -> None:
    s = server(statuses=[500] * 10)
    answers, stats = refiner(s.url, tmp_path, concurrency=1, retries=2).refine(TOPICS[:1], rounds=1)
    assert stats.failures == 1 and not answers[0][0].usable
    assert "xtm-train: warning: LLM request failed after 3 attempts" in capsys.readouterr().err


def test_wrong_key_or_model_stops_with_a_clear_error(server, tmp_path) -> None:
    s = server(statuses=[401])
    with pytest.raises(XtmError, match="HTTP 401.*--llm-url, --llm-model"):
        refiner(s.url, tmp_path, concurrency=1).refine(TOPICS[:1], rounds=1)


def test_concurrency_is_bounded_and_the_key_comes_from_the_environment(server, tmp_path, monkeypatch,
                                                                       capsys) -> None:
    monkeypatch.setenv("XTM_TEST_KEY", "sk-secret-123")
    s = server(delay=0.1)
    refiner(s.url, tmp_path, concurrency=2, api_key_env="XTM_TEST_KEY").refine(TOPICS, rounds=3)
    assert s.max_in_flight == 2
    assert all(h.get("Authorization") == "Bearer sk-secret-123" for h in s.headers)
    assert "sk-secret" not in capsys.readouterr().err
    assert not any("sk-secret" in p.read_text() for p in tmp_path.rglob("*.json"))


def test_unreachable_server_fails_soft(tmp_path) -> None:
    answers, stats = refiner("http://127.0.0.1:9", tmp_path, retries=1).refine(TOPICS[:1], rounds=1)
    assert stats.failures == 1 and not answers[0][0].usable


class FakeVLLMEngine:
    """Stands in for vllm.LLM (GPU only): records calls, answers n samples per conversation."""

    def __init__(self) -> None:
        self.calls = []

    def chat(self, conversations, params, use_tqdm=False):
        self.calls.append((conversations, params))
        n = params["n"] if isinstance(params, dict) else params.n
        return [SimpleNamespace(prompt_token_ids=[1, 2, 3],
                                outputs=[SimpleNamespace(text=f"EN: player - team\nZH: 球员 {i}", token_ids=[1] * 4)
                                         for i in range(n)]) for _ in conversations]


def test_vllm_step_is_one_batched_call_with_n_samples(tmp_path) -> None:
    engine = FakeVLLMEngine()
    gen = VLLMGenerator("any/model", engine=engine)
    r = LLMRefiner(gen, VocabMatcher(VOCABS), n_words=5, cache=AnswerCache(tmp_path))
    answers, stats = r.refine(TOPICS, rounds=5)
    assert len(engine.calls) == 1 and stats.calls == 1
    conversations, params = engine.calls[0]
    assert len(conversations) == 2 and conversations[0][0]["role"] == "user"
    assert (params["n"] if isinstance(params, dict) else params.n) == 5
    assert stats.prompt_tokens == 6 and stats.completion_tokens == 40
    assert all(len(row) == 5 and row[0].words["zh"] == ["球员"] for row in answers)
    r.refine(TOPICS, rounds=5)
    assert len(engine.calls) == 1                          # cached


def test_vllm_missing_gives_an_actionable_error() -> None:
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    with pytest.raises(XtmError, match="--refiner openai"):
        VLLMGenerator("m").generate(["p"], 1, Sampling(), StepStats())


# -- local backends: what their answers are cached under ------------------------------------------------------
# Found by a review (F5): the transformers backend filed answers under `transformers:<base name>`, so a model in
# a sibling directory with the same name (a/SmolLM2, b/SmolLM2), a hub name with the same suffix, or a
# checkpoint overwritten in place got the first model's answers, with 0 calls.

TINY_WORDS = ["<pad>", "<unk>", "</s>", "EN:", "ZH:", "-", "\n", *VOCABS["en"], *VOCABS["zh"]]


def build_tiny_llm(out: Path, seed: int) -> Path:
    """A random 1-layer Llama (hidden size 16) with a word-level tokenizer over TINY_WORDS and a chat template."""
    pytest.importorskip("transformers")
    import torch
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(TINY_WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")
    fast.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(TINY_WORDS), hidden_size=16, intermediate_size=32,
                                          num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                          head_dim=8, max_position_embeddings=4096, eos_token_id=2, pad_token_id=0,
                                          bos_token_id=None))
    lm.save_pretrained(out)
    fast.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_llms(tmp_path_factory) -> tuple[Path, Path]:
    """Two different tiny models with one base name, in sibling directories: a/tiny and b/tiny."""
    root = tmp_path_factory.mktemp("llms")
    return build_tiny_llm(root / "a" / "tiny", seed=1), build_tiny_llm(root / "b" / "tiny", seed=2)


SAMPLED = Sampling(temperature=1.0, top_p=1.0, max_tokens=12, seed=3)


def test_two_local_models_with_one_base_name_are_cached_apart(tiny_llms, tmp_path) -> None:
    a, b = (TransformersGenerator(str(d)) for d in tiny_llms)
    assert a.id == b.id == "transformers:tiny"           # what reports show is unchanged
    assert a.cache_id != b.cache_id and a.cache_id.startswith("transformers:tiny@")
    assert str(tiny_llms[0].parent) not in a.cache_id    # short: the path and the fingerprint are hashed
    assert TransformersGenerator(str(tiny_llms[0])).cache_id == a.cache_id  # stable
    cache = AnswerCache(tmp_path)
    usable = []
    for gen in (a, b):
        r = LLMRefiner(gen, VocabMatcher(VOCABS), n_words=5, sampling=SAMPLED, cache=cache)
        answers, stats = r.refine(TOPICS[:1], rounds=2)
        assert stats.calls == 1 and stats.cache_hits == 0   # b was: 0 calls, a's answers
        usable.append(sum(x.usable for x in answers[0]))
    assert usable[0] > 0                                    # something of a's was cached
    _, stats = LLMRefiner(a, VocabMatcher(VOCABS), n_words=5, sampling=SAMPLED, cache=cache).refine(TOPICS[:1], 2)
    assert stats.cache_hits == usable[0]                    # a's own answers are still a's


def test_a_local_model_changed_in_place_is_another_cache_key(tmp_path) -> None:
    """A checkpoint overwritten at the same path (new weights, same names) is another model."""
    d = tmp_path / "final"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "llama", "hidden_size": 16}')
    (d / "model.safetensors").write_bytes(b"\0" * 100)
    first = TransformersGenerator(str(d)).cache_id
    assert TransformersGenerator(str(d)).cache_id == first
    (d / "model.safetensors").write_bytes(b"\1" * 101)
    second = TransformersGenerator(str(d)).cache_id
    (d / "config.json").write_text('{"model_type": "llama", "hidden_size": 32}')
    os.utime(d / "config.json", ns=(1, 1))
    third = TransformersGenerator(str(d)).cache_id
    assert len({first, second, third}) == 3


def test_hub_names_and_gguf_files_are_keyed_by_all_of_their_name(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)                          # no local directory of these names
    qwen, unsloth = (TransformersGenerator(f"{org}/Qwen2.5-0.5B-Instruct") for org in ("Qwen", "unsloth"))
    assert qwen.cache_id == "transformers:Qwen/Qwen2.5-0.5B-Instruct" != unsloth.cache_id
    assert VLLMGenerator("any/model").cache_id == "vllm:any/model"   # a hub name keeps its key
    for sub, body in (("x", b"GGUF one"), ("y", b"GGUF two")):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "model.gguf").write_bytes(body)
    for make in (TransformersGenerator, VLLMGenerator):
        x, y = make("x/model.gguf"), make("y/model.gguf")
        assert x.cache_id != y.cache_id and "@" in x.cache_id and str(tmp_path) not in x.cache_id


# -- the transformers backend's random numbers ----------------------------------------------------------------
# Found by a review (F7): generate called torch.manual_seed(seed + i) on the global RNG, in the middle of
# training, with i the prompt's index among the uncached ones: training's random stream after a refinement was
# fixed by the LLM seed and by what happened to be cached, so a rerun served from the cache trained another model.


def test_transformers_sampling_leaves_the_global_rng_alone(tiny_llms) -> None:
    import torch

    gen = TransformersGenerator(str(tiny_llms[0]))
    for training_seed in (1, 2):
        torch.manual_seed(training_seed)
        gen.generate(["player team"], 2, SAMPLED, StepStats())
        after = torch.rand(4)
        torch.manual_seed(training_seed)
        assert torch.equal(after, torch.rand(4))         # was: the same numbers whatever the training's seed


def test_transformers_sampling_of_a_prompt_does_not_depend_on_the_others_asked(tiny_llms) -> None:
    gen = TransformersGenerator(str(tiny_llms[0]))
    both = gen.generate(["market profit", "player team"], 3, SAMPLED, StepStats())
    alone = gen.generate(["player team"], 3, SAMPLED, StepStats())
    assert alone[0] == both[1]                           # was: seed + 1 in the pair, seed + 0 alone
    assert gen.generate(["market profit"], 3, SAMPLED, StepStats())[0] == both[0]
    other_seed = gen.generate(["player team"], 3, Sampling(temperature=1.0, top_p=1.0, max_tokens=12, seed=4),
                              StepStats())
    assert other_seed[0] != alone[0]                     # the LLM seed still decides the samples


def test_vllm_asks_in_slices_of_prompts_per_call(tmp_path) -> None:
    """A step's topics go in batched calls of prompts_per_call (64): a Ctrl-C loses one slice's answers at most."""
    engine = FakeVLLMEngine()
    gen = VLLMGenerator("any/model", engine=engine)
    topics = [TopicWords(k, {"en": ["player", "team"], "zh": ["球员", "球队"]}) for k in range(70)]
    answers, stats = LLMRefiner(gen, VocabMatcher(VOCABS), n_words=5, cache=AnswerCache(tmp_path)).refine(topics, 2)
    assert [len(c[0]) for c in engine.calls] == [64, 6] and stats.calls == 2 and len(answers) == 70


def test_a_local_model_interrupted_keeps_the_answers_it_gave(tiny_llms, tmp_path) -> None:
    """Answers of an in-process model were handed over (and cached) only once every prompt was answered: a Ctrl-C
    after minutes of answers (15 s a prompt on a CPU) kept none. Now each prompt's answer is handed over before
    the next is asked (phase 2's refiner and the labels both take them through generate_in_slices)."""
    from xtm.trainer.phase2.refiners import generate_in_slices

    class CtrlCOnTheSecondPrompt(TransformersGenerator):  # a real model; the interrupt is the test's
        asked = 0

        def generate(self, prompts, rounds, sampling, stats):
            if self.asked == 1:
                raise KeyboardInterrupt
            self.asked += 1
            return super().generate(prompts, rounds, sampling, stats)

    got: list[tuple[int, list]] = []
    with pytest.raises(KeyboardInterrupt):
        generate_in_slices(CtrlCOnTheSecondPrompt(str(tiny_llms[0])), ["EN: player", "EN: market", "ZH: 球员"], 2,
                           SAMPLED, StepStats(), lambda first, rows: got.append((first, rows)))
    assert [(first, len(rows), len(rows[0])) for first, rows in got] == [(0, 1, 2)]  # the first prompt's 2 rounds
