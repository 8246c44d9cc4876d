"""Topic refiners: who proposes the refined bilingual word sets of a refinement step.

One interface, `Refiner.refine(topics, rounds) -> answers[topic][round]`, each answer a
`ParsedAnswer` (words per language, already matched to the vocabularies). Backends:

  embedding     no LLM: words voted from bootstrap resamples around each topic's embedding
                centroid, with the nearest words of every language's vocabulary (the default; here)
  openai        any OpenAI-compatible endpoint (vllm serve, llama.cpp server, transformers
                serve, hosted APIs): K x R requests, bounded concurrency, timeouts, retries
                (the client: xtm.trainer.phase2.llm_http)
  vllm          in-process vLLM engine: one batched `chat` call with n = R samples per topic
                (xtm.trainer.phase2.local_llms)
  transformers  a small local model through transformers (CPU is fine for tiny models;
                xtm.trainer.phase2.local_llms)

Every LLM backend is a `TextGenerator` that `LLMRefiner` prompts. Every usable LLM answer is cached
on disk (xtm.trainer.phase2.answer_cache), keyed by backend, model, prompt, round and sampling
settings: a resumed or repeated run makes no new calls. An unusable answer (no word of any
vocabulary) is never cached, and one found in the cache is a miss. Calls, tokens, seconds and
every kind of bad answer of each refinement step are kept in `stats` (and end up in
history.json / metrics.json).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from xtm.config import REFINER_NAMES, Phase2Config, RefinerConfig, Sampling, default_of
from xtm.errors import XtmError
from xtm.trainer.phase2.answer_cache import AnswerCache
from xtm.trainer.phase2.answer_parser import ParsedAnswer, VocabMatcher, parse_answer
from xtm.trainer.phase2.llm_http import OpenAICompatibleGenerator
from xtm.trainer.phase2.local_llms import TransformersGenerator, VLLMGenerator
from xtm.trainer.phase2.prompt import TopicWords, build_prompt

# Defaults are xtm.config's: words asked for (LLM) or chosen (embedding) per language and topic in one
# answer are phase 2's asked_words (the vote then keeps refined_words); the embedding refiner's
# exclusive a RefinerConfig's (the LLM client's are in xtm.trainer.phase2.llm_http).
N_WORDS = default_of(Phase2Config, "asked_words")
_DEFAULT = RefinerConfig()


@dataclass
class StepStats:
    """What one refinement step cost, and what went wrong in it.

    failures       answers with no text at all (every attempt failed: network, timeout, HTTP, bad body)
    unusable       answers with text that named no word of any vocabulary (not cached)
    bad_answers    HTTP 200 bodies refused: wrong-shaped or non-JSON, truncated, larger than the cap
    ignored_usage  answers whose token counts were not believable (negative, non-integer, huge): not added
    stale_cache    cached answers that turned out unusable (an older version cached them): asked again
    """

    calls: int = 0
    cache_hits: int = 0
    failures: int = 0
    unusable: int = 0
    bad_answers: int = 0
    ignored_usage: int = 0
    stale_cache: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    FIELDS = ("calls", "cache_hits", "failures", "unusable", "bad_answers", "ignored_usage", "stale_cache",
              "prompt_tokens", "completion_tokens", "seconds")

    def add(self, **kw: float) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.FIELDS}


class Refiner(Protocol):
    name: str

    def refine(self, topics: list[TopicWords], rounds: int) -> tuple[list[list[ParsedAnswer]], StepStats]: ...


# --------------------------------------------------------------------------------------------
# The refiner that prompts a text generator (the LLM backends: llm_http, local_llms)
# --------------------------------------------------------------------------------------------


class TextGenerator(Protocol):
    id: str  # what reports and labels.json name it (backend:model)
    cache_id: str  # what its cached answers are filed under: everything that tells two models apart (server, path)

    def generate(self, prompts: list[str], rounds: int, sampling: Sampling,
                 stats: StepStats) -> list[list[str | None]]:
        """R answers per prompt (None where a request failed for good)."""
        ...


def generate_in_slices(generator: TextGenerator, prompts: list[str], rounds: int, sampling: Sampling,
                       stats: StepStats, arrived: Callable[[int, list[list[str | None]]], None]) -> None:
    """`generator.generate` over `prompts` a slice at a time (its `prompts_per_call`, default all at once), handing
    each slice's answers to `arrived(index of its first prompt, answers)` before the next is asked: an in-process
    model on a CPU (15 s a prompt) cached nothing until every prompt was answered, so a Ctrl-C lost them all."""
    size = max(1, int(getattr(generator, "prompts_per_call", None) or len(prompts) or 1))
    for first in range(0, len(prompts), size):
        arrived(first, generator.generate(prompts[first:first + size], rounds, sampling, stats))


class LLMRefiner:
    """Prompts a text generator (with the answer cache in front) and parses its answers."""

    def __init__(self, generator: TextGenerator, matcher: VocabMatcher, n_words: int = N_WORDS,
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
        keys = [[AnswerCache.key(self.generator.cache_id, p, r, self.sampling) for r in range(rounds)] for p in prompts]
        answers: list[list[ParsedAnswer | None]] = [[self._cached(k, stats) for k in ks] for ks in keys]
        todo = [i for i, row in enumerate(answers) if any(a is None for a in row)]
        if todo and hasattr(self.generator, "generate_jobs"):
            # One request per missing (topic, round): a cached round is never asked again. Each answer is
            # parsed and cached as it arrives, so a refinement stopped half-way (Ctrl-C) keeps what came.
            missing = [(i, r) for i in todo for r in range(rounds) if answers[i][r] is None]
            one_at_a_time = threading.Lock()  # the parser's stemmer is not promised to be thread-safe

            def arrived(job: int, text: str | None) -> None:
                i, r = missing[job]
                with one_at_a_time:
                    answers[i][r] = self._fresh(keys[i][r], text, stats)

            self.generator.generate_jobs([(prompts[i], r) for i, r in missing], self.sampling, stats,
                                         on_answer=arrived)
        elif todo:
            def arrived_rows(first: int, rows: list[list[str | None]]) -> None:
                for i, texts in zip(todo[first:first + len(rows)], rows, strict=True):
                    for r, text in enumerate(texts):
                        if answers[i][r] is None:
                            answers[i][r] = self._fresh(keys[i][r], text, stats)

            generate_in_slices(self.generator, [prompts[i] for i in todo], rounds, self.sampling, stats, arrived_rows)
        parsed = [[a if a is not None else self._parse(None) for a in row] for row in answers]
        stats.seconds = time.perf_counter() - t0
        return parsed, stats

    def _parse(self, text: str | None) -> ParsedAnswer:
        return parse_answer(text, self.matcher, max_words=2 * self.n_words)

    def _cached(self, key: str, stats: StepStats) -> ParsedAnswer | None:
        """A usable cached answer, or None (a miss). An unusable entry, which older versions wrote,
        is a miss too: one empty answer must not cost every later run with the same model."""
        text = self.cache.get(key)
        if text is None:
            return None
        answer = self._parse(text)
        if not answer.usable:
            stats.add(stale_cache=1)
            return None
        stats.add(cache_hits=1)
        return answer

    def _fresh(self, key: str, text: Any, stats: StepStats) -> ParsedAnswer:
        """Parse a new answer; cache it only when usable, so the next run asks again otherwise."""
        if not isinstance(text, str):
            stats.add(failures=1)
            return self._parse(None)
        answer = self._parse(text)
        if answer.usable:
            self.cache.put(key, text)
        else:
            stats.add(unusable=1)
        return answer


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

    exclusive: a word may enter only the refined set of the topic whose centroid it is nearest,
    so the sets are disjoint. An LLM shown every topic as context keeps its answers apart; without
    this the sets share generic words and the MMD pulls the topics together (docs/llm_xtm.md).
    """

    name = "embedding"
    HUB_K = 10

    def __init__(self, vocabs: dict[str, Sequence[str]], word_vectors: dict[str, np.ndarray],
                 n_words: int = N_WORDS, neighbours: int = 30, seed: int = 0,
                 exclusive: bool = _DEFAULT.exclusive) -> None:
        self.langs = list(vocabs)
        self.index = {lang: {w: i for i, w in enumerate(v)} for lang, v in vocabs.items()}
        self.vocabs = {lang: list(v) for lang, v in vocabs.items()}
        self.vectors = {lang: v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
                        for lang, v in word_vectors.items()}
        self.n_words, self.neighbours = n_words, neighbours
        self.seed, self.exclusive = seed, exclusive

    def _rows(self, lang: str, words: Sequence[str]) -> list[int]:
        return [self.index[lang][w] for w in words if w in self.index[lang]]

    def refine(self, topics: list[TopicWords], rounds: int) -> tuple[list[list[ParsedAnswer]], StepStats]:
        stats = StepStats()
        t0 = time.perf_counter()
        pools = [[(lang, j) for lang in self.langs for j in self._rows(lang, t.words.get(lang, []))] for t in topics]
        centroids = np.stack([self._centroid(pool) for pool in pools])
        hub, home = {}, {}
        for lang in self.langs:
            sims = self.vectors[lang] @ centroids.T                       # [V, K]
            k = min(self.HUB_K, sims.shape[1])
            hub[lang] = np.sort(sims, axis=1)[:, -k:].mean(1)
            home[lang] = sims.argmax(1) if self.exclusive else None     # each word's nearest topic
        out = []
        for position, (topic, pool) in enumerate(zip(topics, pools, strict=True)):
            # Seeded by the candidates themselves: the same model state gives the same answers,
            # so a resumed run refines exactly as the uninterrupted one would.
            digest = hashlib.sha256(json.dumps([topic.topic, topic.words], ensure_ascii=False).encode()).digest()
            rng = np.random.default_rng([self.seed, int.from_bytes(digest[:8], "little")])
            allowed = {lang: None if home[lang] is None else home[lang] == position for lang in self.langs}
            answers = []
            for _ in range(rounds):
                if not pool:
                    answers.append(ParsedAnswer(words={lang: [] for lang in self.langs}))
                    continue
                sample = [pool[j] for j in rng.integers(0, len(pool), size=len(pool))]
                c = self._centroid(sample)
                answers.append(ParsedAnswer(words={lang: self._best(lang, c, sample, topic, hub[lang], allowed[lang])
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
              hub: np.ndarray, allowed: np.ndarray | None = None) -> list[str]:
        own = self._rows(lang, (topic.more or topic.words).get(lang, []))
        cand = set(own)
        others = [j for x, j in sample if x != lang]
        if others and self.neighbours:
            other_c = self._centroid([(x, j) for x, j in sample if x != lang])
            csls_other = 2 * (self.vectors[lang] @ other_c) - hub
            cand |= set(np.argpartition(-csls_other, min(self.neighbours, len(hub) - 1))[: self.neighbours].tolist())
        rows = np.fromiter(cand, dtype=np.int64)
        if allowed is not None:
            rows = rows[allowed[rows]]
        if not rows.size:
            return []
        score = 2 * (self.vectors[lang][rows] @ c) - hub[rows]
        order = np.lexsort((rows, -score))[: self.n_words]
        return [self.vocabs[lang][int(rows[i])] for i in order]


# --------------------------------------------------------------------------------------------
# Construction from CLI settings
# --------------------------------------------------------------------------------------------


def make_refiner(cfg: RefinerConfig, vocabs: dict[str, Sequence[str]],
                 word_vectors: Callable[[], dict[str, np.ndarray]], n_words: int,
                 cache_dir: Path | None, seed: int = 0) -> Refiner:
    """The refiner a run asked for; `word_vectors` is called only by the embedding refiner."""
    if cfg.backend == "embedding":
        return EmbeddingRefiner(vocabs, word_vectors(), n_words=n_words, seed=seed, exclusive=cfg.exclusive)
    generator: TextGenerator
    if cfg.backend == "openai":
        generator = OpenAICompatibleGenerator(cfg.llm_url or "", cfg.llm_model or "", api_key_env=cfg.api_key_env,
                                              concurrency=cfg.concurrency, timeout=cfg.timeout, retries=cfg.retries)
    elif cfg.backend == "vllm":
        if not cfg.llm_model:
            raise XtmError("--refiner vllm needs --llm-model (a hub name or local path vLLM can load)")
        generator = VLLMGenerator(cfg.llm_model)
    elif cfg.backend == "transformers":
        if not cfg.llm_model:
            raise XtmError("--refiner transformers needs --llm-model (a local directory, hub name or .gguf file)")
        generator = TransformersGenerator(cfg.llm_model).check()
    else:
        raise XtmError(f"unknown refiner '{cfg.backend}': choose one of {', '.join(REFINER_NAMES)}")
    return LLMRefiner(generator, VocabMatcher(vocabs), n_words=n_words, sampling=cfg.sampling,
                      cache=AnswerCache(cache_dir))
