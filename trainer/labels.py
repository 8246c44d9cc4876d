"""Topic labels: a short human name for every topic in every language, for a finished run.

    xtm-label RUN_DIR [--refiner openai --llm-url ... --llm-model ...]
    xtm-train labels every run when training ends (trainer/run.py): with the LLM its phase 2 was given,
    otherwise without one.

Two ways to a label, one per (topic, language):
  * an LLM (any refiner backend: an OpenAI-compatible server, vLLM, transformers; the clients, the
    answer cache and the client's hardening are phase 2's: xtm.trainer.phase2.refiners, llm_http,
    local_llms, answer_cache). It is shown the topic's top words in every language and asked for a
    1-4 word name in one language.
    `xtm.labels.clean_label` decides whether the answer is a label; when it is not (empty, an essay,
    markup, a refusal, the wrong script) or the request failed, the fallback label is used.
  * the LLM-free fallback (FALLBACK): the topic's best-connected top words. The first top words by
    probability are often frequent words several topics share ("said", "year"); the words that
    co-occur most with the topic's other top words in real documents carry its theme (the same idea
    as the NPMI coherence the papers score topics by). The documents are the run's own parity sample
    (up to 1,000 per language, saved by training), so xtm-label gives the same labels as training did
    without reopening the user's data. Without that sample: the top words in order.

Answers that are labels are cached like refinement answers (one entry per generator, prompt and
sampling): a rerun makes no call for them. An answer that was not a label (a refusal, an error page
a proxy passed on as text, an essay) is not cached, nor is a failed request: a rerun asks again, so
one bad moment of a server does not stay in the labels for good (an older cache's such entries are
asked again too).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xtm.config import LabelConfig
from xtm.errors import XtmError
from xtm.labels import TopicLabels, clean_label, topics_digest
from xtm.languages import language_name
from xtm.run_dir import RunDir
from xtm.trainer.phase2.answer_cache import AnswerCache
from xtm.trainer.phase2.refiners import StepStats, TextGenerator, generate_in_slices, make_refiner

logger = logging.getLogger(__name__)

__all__ = ["FALLBACK", "central_words", "fallback_label", "label_prompt", "label_run", "label_topics",
           "make_generator"]

FALLBACK = ("the {n} best-connected of each topic's top {m} words (largest summed NPMI with the topic's other top "
            "words over the run's own documents: the parity sample, up to 1,000 per language), in topic-weight order")
SEPARATOR = " · "
DEFAULT = LabelConfig()


# --------------------------------------------------------------------------------------------
# The LLM-free fallback
# --------------------------------------------------------------------------------------------


def central_words(words: Sequence[str], index: dict[str, int], docs: Any, n: int) -> list[str]:
    """The `n` words of `words` (a topic's top words, best first) that co-occur most with the others
    in `docs` (a CSR bag-of-words matrix over the vocabulary `index`), kept in their topic order.
    Ties, and words never seen in `docs`, go by topic rank; without documents: the first n words."""
    words = list(words)
    if docs is None or docs.shape[0] == 0 or len(words) <= n:
        return words[:n]
    cols = [index.get(w, -1) for w in words]
    x = np.zeros((docs.shape[0], len(words)), dtype=np.float64)
    known = [i for i, c in enumerate(cols) if c >= 0]
    if known:
        x[:, known] = (docs[:, [cols[i] for i in known]].toarray() > 0)
    total = float(docs.shape[0])
    p = x.sum(0) / total
    pij = (x.T @ x) / total
    with np.errstate(divide="ignore", invalid="ignore"):
        npmi = np.log(pij / np.outer(p, p)) / -np.log(pij)
    npmi[pij == 0] = -1.0                       # never together: as unrelated as NPMI says
    npmi[(pij >= 1) | ~np.isfinite(npmi)] = 0.0  # in every document: tells nothing
    np.fill_diagonal(npmi, 0.0)
    degree = npmi.sum(1)
    degree[p == 0] = -float(len(words))         # absent from the documents: last
    rank = np.arange(len(words))
    chosen = sorted(np.lexsort((rank, -degree))[:n].tolist())
    return [words[i] for i in chosen]


def fallback_label(words: Sequence[str], index: dict[str, int], docs: Any, n: int) -> str:
    return SEPARATOR.join(central_words(words, index, docs, n))


# --------------------------------------------------------------------------------------------
# LLM labels
# --------------------------------------------------------------------------------------------


def label_prompt(words: dict[str, Sequence[str]], lang: str) -> str:
    """One topic, one language: a short title asked in `lang` for the topic's top words in every language.
    Worded for small models too: SmolLM2-135M echoed "1 to 4 words" back for an instruction-style
    prompt, and answers this one with titles ("The Stock Market: A World of Finances")."""
    target = language_name(lang)
    shown = "; ".join(f"{', '.join(ws)} ({language_name(x)})" for x, ws in words.items() if ws)
    return (f"Give a short {target} title (one to three words) for a topic with these words: {shown}. "
            f"Reply with the {target} title only.")


def make_generator(cfg: LabelConfig) -> TextGenerator:
    """The text generator phase 2 would use for this backend and LLM (the same client, checks and messages)."""
    if not cfg.uses_llm:
        raise XtmError("LLM-free labels need no generator")
    refiner = make_refiner(cfg.refiner(), {}, dict, n_words=1, cache_dir=None)
    generator = refiner.generator  # type: ignore[attr-defined]  # every LLM backend is an LLMRefiner
    if hasattr(generator, "failure_note"):  # the HTTP client's warning for a request that failed every attempt
        generator.failure_note = "that label is the LLM-free one"
    return generator


def ask(generator: TextGenerator, prompts: list[str], cfg: LabelConfig, cache: AnswerCache,
        stats: StepStats, is_label: Callable[[int, str], bool]) -> tuple[list[str | None], int, int]:
    """One answer per prompt, from the cache where it has one; new answers that are labels (`is_label(i, text)`)
    are cached as they arrive. Also how many requests were sent, and how many of them got no answer at all (every
    attempt failed: not an empty answer, which a server that runs gives)."""
    sampling = cfg.sampling
    keys = [AnswerCache.key(generator.cache_id, p, 0, sampling) for p in prompts]
    texts: list[str | None] = []
    for i, key in enumerate(keys):
        text = cache.get(key)
        if text and is_label(i, text):
            stats.add(cache_hits=1)
        elif text is not None:
            stats.add(stale_cache=1)             # damaged, or an older cache's answer that is no label: asked again
            text = None
        texts.append(text)
    todo = [i for i, t in enumerate(texts) if t is None]
    unanswered: list[int] = []  # jobs with no answer at all (list.append: safe from the requests' threads)

    def arrived(job: int, text: str | None) -> None:
        # Cached as it arrives (in the request's thread), so labelling stopped half-way keeps what came.
        i = todo[job]
        if isinstance(text, str) and text.strip():
            if is_label(i, text):
                cache.put(keys[i], text)
            texts[i] = text
        else:
            stats.add(failures=1)
            if text is None:
                unanswered.append(job)

    if todo and hasattr(generator, "generate_jobs"):
        generator.generate_jobs([(prompts[i], 0) for i in todo], sampling, stats, on_answer=arrived)
    elif todo:
        def arrived_rows(first: int, rows: list[list[str | None]]) -> None:
            for job, row in enumerate(rows, start=first):
                arrived(job, row[0] if row else None)

        generate_in_slices(generator, [prompts[i] for i in todo], 1, sampling, stats, arrived_rows)
    return texts, len(todo), len(unanswered)


def label_topics(topics: dict[str, list[list[str]]], cfg: LabelConfig = DEFAULT, *,
                 docs: dict[str, tuple[dict[str, int], Any]] | None = None, cache_dir: Path | None = None,
                 generator: TextGenerator | None = None, llm_errors: str = "raise") -> TopicLabels:
    """Every topic's label in every language of `topics` ({lang: [K][top words]}).

    docs: {lang: (word -> column, CSR bags of words)} for the fallback's co-occurrence (None: top words
    in order). With an LLM backend (or `generator`), the LLM is asked once per topic and language and
    its answer kept where it is a label. llm_errors="fallback": an error the client stops on (a wrong
    key or URL) becomes a warning and fallback labels, for callers that must not fail (end of training).
    """
    langs = list(topics)
    k = len(topics[langs[0]])
    docs = docs or {}
    top = {lang: [ws[:cfg.top_words] for ws in topics[lang]] for lang in langs}
    fallback = [{lang: fallback_label(top[lang][t], *docs.get(lang, ({}, None)), n=cfg.fallback_words)
                 for lang in langs} for t in range(k)]
    labels = [dict(row) for row in fallback]
    sources = [{lang: "fallback" for lang in langs} for _ in range(k)]
    stats = StepStats()
    t0 = time.perf_counter()
    name = "fallback"
    rejected = 0
    if generator is None and cfg.uses_llm:
        generator = make_generator(cfg)
    if generator is not None:
        name = generator.id
        jobs = [(t, lang) for t in range(k) for lang in langs]
        prompts = [label_prompt({x: top[x][t] for x in langs}, lang) for t, lang in jobs]
        try:
            def is_label(i: int, text: str) -> bool:
                return clean_label(text, jobs[i][1], cfg.max_chars, cfg.max_words) is not None

            answers, sent, unanswered = ask(generator, prompts, cfg, AnswerCache(cache_dir), stats, is_label)
            if sent and unanswered == sent:
                # Not one answer to what was asked (a wrong URL, a server that is down; cached answers aside):
                # labels from it would be the fallback's under the LLM's name, replacing what labels.json held.
                raise XtmError(f"{name} answered none of the {sent} label requests sent (each failed every "
                               "attempt: the warnings above say why); check --llm-url and that the server runs, "
                               "or label without an LLM (no --refiner)")
        except XtmError as e:
            if llm_errors != "fallback":
                raise
            logger.warning(f"topic labels: the LLM could not be used ({e}); the labels are the LLM-free fallback")
            answers = [None] * len(jobs)
            name = "fallback"
        for (t, lang), text in zip(jobs, answers, strict=True):
            label = clean_label(text, lang, cfg.max_chars, cfg.max_words)
            if label is not None:
                labels[t][lang], sources[t][lang] = label, "llm"
            elif text is not None:
                rejected += 1
    by_llm = sum(1 for row in sources for s in row.values() if s == "llm")
    out_stats = {**{f: v for f, v in stats.to_dict().items() if f not in ("unusable", "seconds")},
                 "rejected": rejected, "llm_labels": by_llm, "fallback_labels": k * len(langs) - by_llm,
                 "seconds": round(time.perf_counter() - t0, 3)}
    if generator is not None:
        logger.info(f"topic labels: {by_llm} of {k * len(langs)} by {name} ({out_stats['calls']} calls, "
                    f"{out_stats['cache_hits']} cached; {rejected} answers were not labels), the rest the fallback")
    return TopicLabels(langs=langs, labels=labels, sources=sources, generator=name,
                       fallback=FALLBACK.format(n=cfg.fallback_words, m=cfg.top_words), stats=out_stats,
                       topics_sha256=topics_digest(topics))


def parity_sample_bows(run: RunDir, langs: Sequence[str]) -> dict[str, tuple[dict[str, int], Any]]:
    """{lang: (word -> column, the run's parity sample)} for the languages that have a sample: the documents a
    label is checked against are the ones export checks its graphs against."""
    out = {}
    for lang in langs:
        vocab = run.read_vocab(lang)
        sample = run.load_parity_sample(lang, len(vocab))
        if sample is not None:
            out[lang] = ({w: i for i, w in enumerate(vocab)}, sample)
    return out


def label_run(run_dir: str | Path, cfg: LabelConfig = DEFAULT, *, cache_dir: Path | None = None,
              generator: TextGenerator | None = None, llm_errors: str = "raise") -> TopicLabels:
    """Label a finished run (its topics_<lang>.txt) and write RUN_DIR/labels.json; returns the labels."""
    run = RunDir(run_dir)
    config = run.load_config()
    langs = config.get("langs")
    if not isinstance(langs, list) or not langs or not all(isinstance(x, str) for x in langs):
        raise XtmError("config.json has no list of languages", path=run.file(RunDir.CONFIG), field="langs")
    topics = {}
    for lang in langs:
        if not run.topics_path(lang).is_file():
            raise XtmError(f"the run has no topics for '{lang}' (xtm-train writes them when training ends)",
                           path=run.topics_path(lang))
        topics[lang] = run.read_topics(lang)
    if len({len(t) for t in topics.values()}) != 1 or any(not ws for t in topics.values() for ws in t):
        raise XtmError("topics_<lang>.txt disagree or have empty topics; line k must be topic k in every language",
                       path=run.path)
    labels = label_topics(topics, cfg, docs=parity_sample_bows(run, langs), cache_dir=cache_dir, generator=generator,
                          llm_errors=llm_errors)
    run.save_labels(labels)
    return labels
