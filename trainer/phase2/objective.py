"""Phase 2 of LLM-XTM (seed 001, Algorithm 1): refine topics every F epochs, then train on
L_phase1 + lambda_mmd * L_MMD + lambda_qa * L_doc-align.

A refinement step takes each topic's top-N words per language from the current model, asks the
refiner for R answers, votes them (self-consistency, section 3.2) into a refined set of M words
per language with counts, and rebuilds what the losses need until the next step:
  * MMD targets: the refined words' embeddings with count weights (section 3.3);
  * theta_hat for every training document: softmax(cos(h_d, t_k) / tau), with h_d the cached
    document embedding and t_k the embedding of topic k's refined bilingual word list (3.4).
A topic whose answers are all unusable keeps its last good refined set; one that never had a set
is left out of L_MMD and represented by its own top words in L_doc-align. Each such event is
counted and reported in metrics.json.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from xtm.config import Phase2Config
from xtm.corpus import Corpus
from xtm.errors import XtmError
from xtm.models_zoo.base import BuildContext, CrossLingualTopicModel
from xtm.models_zoo.encoders import SentenceEncoder, embed_cached, load_encoder
from xtm.topic_words import top_words
from xtm.trainer.phase2.answer_parser import ParsedAnswer
from xtm.trainer.phase2.losses import (
    balanced_raw_distribution,
    balanced_target_weights,
    doc_align_kl,
    similarity_targets,
    top_indices,
    union_raw_distribution,
    weighted_mmd2,
)
from xtm.trainer.phase2.prompt import TopicWords
from xtm.trainer.phase2.refiners import make_refiner

MULTI_KERNEL_SCALES = (0.5, 1.0, 2.0)

logger = logging.getLogger(__name__)


@dataclass
class RefinedTopic:
    """A topic's voted refined set: words per language, best first, with their vote counts."""

    words: dict[str, list[str]]
    counts: dict[str, list[int]]


def vote(answers: Sequence[ParsedAnswer | None], langs: Sequence[str], m: int) -> RefinedTopic | None:
    """Self-consistency: f_k(v) = share of rounds naming v; keep the top-M words per language.

    Ties go to the word named earlier (earlier round, then earlier position), so the result is
    deterministic. None when no answer had a usable word.
    """
    usable = [a for a in answers if a is not None and a.usable]
    if not usable:
        return None
    words, counts = {}, {}
    for lang in langs:
        freq: Counter[str] = Counter()
        first: dict[str, tuple[int, int]] = {}
        for r, a in enumerate(usable):
            for pos, w in enumerate(dict.fromkeys(a.words.get(lang, []))):
                freq[w] += 1
                first.setdefault(w, (r, pos))
        ranked = sorted(freq, key=lambda w: (-freq[w], first[w]))[:m]
        words[lang], counts[lang] = ranked, [freq[w] for w in ranked]
    return RefinedTopic(words, counts)


class NoRefinementAnswerError(XtmError):
    """Every request of a refinement failed and no topic has a refined set: the training loop stops at the checkpoint
    from before it (as for a signal), the run's results are recorded, and then this error is raised."""


class Phase2Objective:
    """The refinement state and the phase-2 losses for one model and corpus."""

    def __init__(self, corpus: Corpus, num_topics: int, cfg: Phase2Config, context: BuildContext,
                 device: torch.device) -> None:
        if min(cfg.refine_every, cfg.rounds, cfg.top_words, cfg.refined_words, cfg.asked_words) < 1:
            raise XtmError("phase 2: --refine-every, --rounds, --top-words, --refined-words and --asked-words "
                           "must be >= 1")
        if not cfg.lr_scale > 0 or not cfg.grad_clip >= 0:
            raise XtmError(f"phase 2: --phase2-lr-scale must be > 0 and --phase2-grad-clip >= 0 (got "
                           f"{cfg.lr_scale}, {cfg.grad_clip})")
        self.cfg, self.device, self.num_topics = cfg, device, num_topics
        self.langs = list(corpus.langs)
        self.vocabs = {lc.lang: list(lc.vocab) for lc in corpus.languages}
        self.word_index = {lang: {w: i for i, w in enumerate(v)} for lang, v in self.vocabs.items()}
        self.cache_dir = context.cache_dir
        self.progress = context.progress
        self._encoder: SentenceEncoder | None = None
        self.word_vectors = {lang: embed_cached(cfg.encoder, vocab, self.cache_dir, progress=self.progress,
                                                encoder=self.encoder)
                             for lang, vocab in self.vocabs.items()}
        self._word_t = {lang: torch.from_numpy(v).to(device) for lang, v in self.word_vectors.items()}
        self.doc_embeddings: dict[str, np.ndarray] = {}
        if cfg.doc_align:
            for lc in corpus.languages:
                if lc.train_texts is None:
                    raise XtmError(f"phase 2 document alignment embeds the training documents, but the corpus "
                                   f"has no text for '{lc.lang}': use --no-doc-align, or JSONL input")
                self.doc_embeddings[lc.lang] = embed_cached(cfg.encoder, lc.train_texts, self.cache_dir,
                                                            progress=self.progress, encoder=self.encoder)
        # Each answer gives asked_words per language (the public code asks for 20); the vote keeps refined_words.
        self.refiner = make_refiner(cfg.refiner, self.vocabs, lambda: self.word_vectors, cfg.asked_words,
                                    self.cache_dir, seed=context.seed)
        self.refined: list[RefinedTopic | None] = [None] * num_topics
        self.events: Counter[str] = Counter()
        self.steps: list[dict[str, Any]] = []
        self._targets: dict[str, Tensor] = {}
        self._theta_hat: dict[str, Tensor] = {}
        self._refined_rows: list[tuple[Tensor, Tensor]] = []
        # Balanced MMD: each language's top-N word indices, fixed at the start of every phase-2 epoch
        # (the public code's schedule); part of the checkpointed state, so a resumed epoch keeps them.
        self.raw_indices: list[Tensor] | None = None

    @property
    def encoder(self) -> SentenceEncoder:
        if self._encoder is None:
            self._encoder = load_encoder(self.cfg.encoder)
        return self._encoder

    # ---- schedule -----------------------------------------------------------------------------
    def refines_at(self, phase2_epoch: int) -> bool:
        """Refine before phase-2 epochs 1, 1 + F, 1 + 2F, ... (the first step needs targets at once)."""
        return (phase2_epoch - 1) % self.cfg.refine_every == 0

    def start_epoch(self, model: CrossLingualTopicModel) -> None:
        """At a phase-2 epoch's first step: fix the top-N words whose weights the MMD source uses this epoch."""
        if self.cfg.balanced_mmd:
            self.raw_indices = top_indices(model.topic_word(), self.cfg.top_words)

    # ---- refinement ---------------------------------------------------------------------------
    def own_top_words(self, model: CrossLingualTopicModel, n: int | None = None) -> dict[str, list[list[str]]]:
        with torch.no_grad():
            betas = [b.detach().float().cpu().numpy() for b in model.topic_word()]
        return {lang: top_words(b, self.vocabs[lang], n or self.cfg.top_words)
                for lang, b in zip(self.langs, betas, strict=True)}

    def refine(self, model: CrossLingualTopicModel, epoch: int) -> dict[str, Any]:
        own = self.own_top_words(model)
        deep = self.own_top_words(model, 4 * self.cfg.top_words)
        topics = [TopicWords(k, {lang: own[lang][k] for lang in self.langs},
                             {lang: deep[lang][k] for lang in self.langs}) for k in range(self.num_topics)]
        answers, stats = self.refiner.refine(topics, self.cfg.rounds)
        asked = len(topics) * self.cfg.rounds - stats.cache_hits
        if asked and stats.failures >= asked and all(r is None for r in self.refined):
            # Not one answer, and no refined set from before: phase 2 would train towards the model's own words
            # under the LLM's name (it did: rc 0, "refined" TU in metrics.json and the report). Said before any
            # event is counted: requests that failed are no unusable answers.
            raise NoRefinementAnswerError(
                f"phase 2: {self.refiner.name} answered none of the {asked} requests sent (each failed every "
                "attempt: the warnings above say why), so no topic has a refined set; the run stopped at the "
                "checkpoint from before this refinement: check --llm-url and that the server runs, then continue "
                "with xtm-train --out RUN --resume (xtm.train: resume=True)")
        usable = kept = missing = 0
        for k, topic_answers in enumerate(answers):
            for a in topic_answers:
                usable += a.usable
                self.events["unusable_answers"] += not a.usable
                self.events["words_mapped"] += a.mapped
                self.events["words_dropped"] += a.dropped
            voted = vote(topic_answers, self.langs, self.cfg.refined_words)
            if voted is not None:
                self.refined[k] = voted
            elif self.refined[k] is not None:
                kept += 1
            else:
                missing += 1
        if all(r is None for r in self.refined):
            logger.warning(f"phase 2: no topic has a refined set after this refinement ({usable} of "
                           f"{len(topics) * self.cfg.rounds} answers usable): phase 2 pulls towards the model's own "
                           "words until a refinement gives one")
        self.events["topics_kept_previous_set"] += kept
        self.events["topics_without_set"] += missing
        self.build_targets(own)
        step = {"epoch": epoch, "refiner": self.refiner.name, **stats.to_dict(),
                "answers": len(topics) * self.cfg.rounds, "usable_answers": usable,
                "topics_kept_previous_set": kept, "topics_without_set": missing}
        self.steps.append(step)
        logger.info(f"refinement at epoch {epoch} ({self.refiner.name}): {usable}/{step['answers']} usable answers, "
                    f"{stats.calls} calls, {stats.cache_hits} cached, {stats.completion_tokens} tokens, "
                    f"{stats.seconds:.1f}s")
        return step

    def build_targets(self, own: dict[str, list[list[str]]]) -> None:
        """Tensors for the losses from the current refined sets (own top words where there is none)."""
        k_total, d = self.num_topics, next(iter(self.word_vectors.values())).shape[1]
        m = max(1, max((sum(len(r.words[x]) for x in self.langs) for r in self.refined if r), default=1))
        y = torch.zeros(k_total, m, d)
        wy = torch.zeros(k_total, m)
        lang_of = torch.full((k_total, m), -1, dtype=torch.long)
        texts = []
        for k, r in enumerate(self.refined):
            words = r.words if r is not None else {lang: own[lang][k] for lang in self.langs}
            texts.append(" ".join(w for lang in self.langs for w in words[lang]))
            if r is None:
                continue
            j = 0
            for li, lang in enumerate(self.langs):
                for w, c in zip(r.words[lang], r.counts[lang], strict=True):
                    y[k, j] = torch.from_numpy(self.word_vectors[lang][self.word_index[lang][w]])
                    wy[k, j] = float(c)
                    lang_of[k, j] = li
                    j += 1
        has_set = wy.sum(1) > 0
        if self.cfg.balanced_mmd:
            wy = balanced_target_weights(wy, lang_of, len(self.langs))
        else:
            wy = wy / wy.sum(1, keepdim=True).clamp_min(1e-12)
        self._targets = {"y": y.to(self.device), "wy": wy.to(self.device), "has_set": has_set.to(self.device)}
        self._refined_rows = self._refined_word_rows()
        if self.cfg.doc_align:
            topic_emb = torch.from_numpy(self.encoder.encode(texts))
            self._theta_hat = {
                lang: similarity_targets(torch.from_numpy(e), topic_emb, self.cfg.doc_tau).to(self.device)
                for lang, e in self.doc_embeddings.items()}

    def _refined_word_rows(self) -> list[tuple[Tensor, Tensor]]:
        """Per language: each topic's refined word indices [K, M] and which are real [K, M] (padding False)."""
        out = []
        for lang in self.langs:
            index = self.word_index[lang]
            rows = [[index[w] for w in r.words[lang]] if r is not None else [] for r in self.refined]
            m = max(1, max(len(r) for r in rows))
            idx = torch.zeros(self.num_topics, m, dtype=torch.long)
            real = torch.zeros(self.num_topics, m, dtype=torch.bool)
            for k, r in enumerate(rows):
                idx[k, :len(r)] = torch.tensor(r, dtype=torch.long)
                real[k, :len(r)] = True
            out.append((idx.to(self.device), real.to(self.device)))
        return out

    def _with_refined(self, idx: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """The top-N indices widened by each topic's refined words not among them, with their masks."""
        wide, masks = [], []
        for top, (ref, real) in zip(idx, self._refined_rows, strict=True):
            new = real & ~(ref[:, :, None] == top[:, None, :]).any(-1)
            wide.append(torch.cat([top, ref], dim=1))
            masks.append(torch.cat([torch.ones_like(top, dtype=torch.bool), new], dim=1))
        return wide, masks

    # ---- losses -------------------------------------------------------------------------------
    def mmd_loss(self, betas: list[Tensor]) -> Tensor:
        if self.cfg.balanced_mmd:
            if self.raw_indices is None:  # (a caller that never started an epoch: take them now)
                self.raw_indices = top_indices(betas, self.cfg.top_words)
            idx = self.raw_indices
        else:
            idx = top_indices(betas, self.cfg.top_words)
        masks = None
        if self.cfg.refined_support:
            idx, masks = self._with_refined(idx)
        wx = (balanced_raw_distribution if self.cfg.balanced_mmd else union_raw_distribution)(betas, idx, masks)
        x = torch.cat([self._word_t[lang][i] for lang, i in zip(self.langs, idx, strict=True)], dim=1)
        scales = MULTI_KERNEL_SCALES if self.cfg.multi_kernel else (1.0,)
        t = self._targets
        per_topic = weighted_mmd2(x, wx, t["y"], t["wy"], scales)
        return per_topic[t["has_set"]].mean() if bool(t["has_set"].any()) else per_topic.sum() * 0.0

    def losses(self, thetas: list[Tensor], betas: list[Tensor], rows: list[Tensor] | None) -> dict[str, Tensor]:
        """The weighted phase-2 terms for one training step."""
        if not self._targets:
            raise XtmError("phase 2: losses asked for before the first refinement step")
        out: dict[str, Tensor] = {}
        if self.cfg.mmd:
            out["mmd"] = self.cfg.lambda_mmd * self.mmd_loss(betas)
        if self.cfg.doc_align:
            if rows is None:
                raise XtmError("phase 2 document alignment needs the batch's document indices")
            kl = [doc_align_kl(theta, self._theta_hat[lang][r])
                  for lang, theta, r in zip(self.langs, thetas, rows, strict=True)]
            out["doc_align"] = self.cfg.lambda_doc * torch.stack(kl).mean()
        return out

    # ---- reporting and checkpoints ------------------------------------------------------------
    def refined_topics(self, model: CrossLingualTopicModel) -> dict[str, list[list[str]]]:
        """Refined words per language and topic; a topic without a set shows its own top words."""
        own = self.own_top_words(model)
        return {lang: [r.words[lang] if r is not None and r.words[lang] else own[lang][k]
                       for k, r in enumerate(self.refined)] for lang in self.langs}

    def report(self) -> dict[str, Any]:
        secs = [s["seconds"] for s in self.steps]
        return {"config": self.cfg.to_dict(), "refinement_steps": len(self.steps),
                "seconds_per_refinement": float(np.mean(secs)) if secs else None,
                "events": dict(self.events), "steps": self.steps,
                "topics_with_refined_set": sum(r is not None for r in self.refined)}

    def state(self) -> dict[str, Any]:
        return {"refined": [asdict(r) if r is not None else None for r in self.refined],
                "events": dict(self.events), "steps": self.steps,
                "raw_indices": [i.tolist() for i in self.raw_indices] if self.raw_indices is not None else None}

    def load_state(self, state: dict[str, Any], model: CrossLingualTopicModel) -> None:
        self.refined = [RefinedTopic(**r) if r is not None else None for r in state.get("refined", [])]
        if len(self.refined) != self.num_topics:
            raise XtmError(f"phase 2: the checkpoint has {len(self.refined)} refined topics, the model "
                           f"{self.num_topics}")
        self.events = Counter(state.get("events", {}))
        self.steps = list(state.get("steps", []))
        self.raw_indices = self._indices_from_state(state.get("raw_indices"))
        if self.steps:
            self.build_targets(self.own_top_words(model))

    def _indices_from_state(self, saved: Any) -> list[Tensor] | None:
        """The epoch's MMD word indices from a checkpoint, checked against this model's shape."""
        if saved is None:
            return None
        try:
            idx = [torch.tensor(i, dtype=torch.long, device=self.device) for i in saved]
        except (TypeError, ValueError, RuntimeError) as e:
            raise XtmError(f"phase 2: the checkpoint's MMD word indices are damaged ({e})") from None
        sizes = [len(v) for v in self.vocabs.values()]
        if len(idx) != len(sizes) or any(i.dim() != 2 or i.shape[0] != self.num_topics or
                                         (i.numel() and not 0 <= int(i.min()) <= int(i.max()) < v)
                                         for i, v in zip(idx, sizes, strict=False)):
            raise XtmError("phase 2: the checkpoint's MMD word indices do not fit this model and vocabulary")
        return idx
