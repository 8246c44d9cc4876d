"""Fit the contextual inference network of a finished run (seed 002), saved in RUN_DIR/contextual/.

Steps (`train_contextual`):
 1. Rebuild the run's model from its checkpoint and re-read its corpus (vocabularies must match).
 2. Teacher: the bag-of-words theta of every training document, divided by its language's mean theta
    (`teacher_debias`; `teacher_targets`: a topic every document of one language gets, and the other's
    do not, is a language prior, not content), and its argmax topic (the seed's "topic
    classification" labels, taken from our own model instead of LDA).
 3. Optional fine-tuning of the sentence encoder on that topic-classification task (seed 002
    sec. 3.2): encoder + a linear classifier, cross-entropy, `finetune_epochs` epochs.
 4. The head (xtm.models_zoo.contextual.ContextualHead) on the (fine-tuned) embeddings with
      distill   KL(theta_bow || theta_ctx) per document: the head imitates the run's encoders;
      ctm       the CTM objective through the run's frozen decoder: reconstruction of the
                document's own bag of words + KL to the prior (the head as a second inference
                network of the same generative model);
    plus, for either, lambda_tc * cross-entropy to the teacher's argmax topic (TCCTM, sec. 3.4); these
    teacher terms count fully for the first training language and `teacher_others` (0.1) for the others,
    which learn the first language's topics mostly through the mined pairs (docs/contextual.md Choice 8),
    plus two consistency terms that make theta a function of what a document says, not of its
    language (issue 14; measurements in docs/contextual.md, "Choice: any language by default"):
      lambda_xl      symmetric KL between the head's theta of pseudo-parallel pairs of training
                     documents in two languages, mined with the sentence encoder itself (margin-
                     based mutual nearest neighbours, Artetxe & Schwenk 2019; `mine_pairs`);
      lambda_smooth  symmetric KL between theta(e) and theta(e + noise) (Gaussian, smooth_sigma
                     per dimension, on the unit embedding): it needs no language, so it also holds
                     for languages the run never saw.
    Both compare the head without dropout (`without_dropout`, Choice 7). With `parallel` (a JSONL of the
    user's translations, xtm.trainer.contextual.parallel_text) its pairs are one more set of the lambda_xl term.
 5. Agreement with the bag-of-words route on the held-out documents of the training languages
    (top-topic match, KL) and, with labels, classification accuracy of both thetas.

RUN_DIR/contextual/ (written under a temporary name and renamed: never half-written; a fit refuses, before
any work, to replace one that holds files it did not write, `check_contextual_replaceable`):
    contextual.json         settings, encoder, head shape, metrics
    head.safetensors        the head
    encoder_top.safetensors USE's fine-tuned top layers (when fine-tuned), or
    encoder/                a fine-tuned sentence-transformers model
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

import xtm
from xtm.atomic import foreign_entries, staged_directory, write_json
from xtm.config import ContextualConfig, Preprocessing, TrainConfig, default_of, from_dict
from xtm.corpus import Corpus
from xtm.errors import XtmError
from xtm.json_files import read_json
from xtm.models_zoo.base import CrossLingualTopicModel, state_digest
from xtm.models_zoo.context_encoders import TrainableSentenceEncoder, load_text_encoder, make_text_encoder
from xtm.models_zoo.contextual import ContextualHead, HeadConfig
from xtm.models_zoo.encoders import parse_encoder_name
from xtm.paths import cache_dir as default_cache_dir
from xtm.paths import is_plain_file_name
from xtm.run_dir import RunDir, run_token_rules
from xtm.trainer.contextual.parallel_text import ParallelText, read_parallel
from xtm.trainer.loop.checkpoint import load_trained_model
from xtm.trainer.loop.model_passes import infer_theta, sparse_batch
from xtm.trainer.loop.torch_setup import pick_device, thread_count, torch_threads

CONTEXTUAL_DIR = RunDir.CONTEXTUAL  # RUN_DIR/contextual/: the fitted head and its settings
CONTEXTUAL_FORMAT = 1
META = "contextual.json"  # in CONTEXTUAL_DIR: the fit's settings, encoder, head shape, metrics; written last


logger = logging.getLogger(__name__)


# -- the run ------------------------------------------------------------------------------------

def load_run_corpus(run_dir: Path, config: dict[str, Any], progress: bool) -> Corpus:
    """The run's corpus re-read from its data source, checked against the run's vocabularies."""
    from xtm.trainer.data.loading import load_corpus
    from xtm.trainer.data.vocab_rules import check_preprocessing

    data = config.get("data", {})
    path = data.get("path")
    if not path or not Path(path).exists():
        raise XtmError(f"the run's training data ({path!r}) is gone: the contextual network is fitted on the "
                       "training documents' text", path=RunDir(run_dir).file(RunDir.CONFIG))
    # No dictionary: only bags of words, texts and labels are needed, and vocabularies do not depend on it.
    # Rules and seed as the run recorded them (a run written before a rule existed: its default).
    # Token rules as the run recorded them (a run made before an upgrade: those it was made with).
    prep = replace(from_dict(Preprocessing, data), token_rules=run_token_rules(run_dir))
    try:
        check_preprocessing(prep)
    except XtmError as e:  # a config.json edited by hand: named, not only its field
        raise XtmError(f"data.{e.field}: {e.reason}" if e.field else e.reason,
                       path=RunDir(run_dir).file(RunDir.CONFIG)) from None
    corpus = load_corpus(path, langs=config.get("langs"), prep=prep,
                         seed=config.get("train_config", {}).get("seed", default_of(TrainConfig, "seed")),
                         progress=progress)
    run = RunDir(run_dir)
    for lc in corpus.languages:
        if run.vocab_path(lc.lang).is_file() and run.read_vocab(lc.lang) != list(lc.vocab):
            raise XtmError(f"the data no longer gives the run's {lc.lang} vocabulary: it changed after training",
                           path=run.vocab_path(lc.lang))
        if lc.train_texts is None:
            raise XtmError(f"the corpus has no document texts for '{lc.lang}' (the contextual network reads text)",
                           path=path)
    return corpus


# -- training -------------------------------------------------------------------------------------

@dataclass
class _LangData:
    lang: str
    index: int
    features: Any          # what encoder.embed reads (Tensor of pooled vectors, or token id lists)
    teacher: np.ndarray    # bag-of-words theta [n, K]
    bow: Any               # scipy CSR (for the ctm objective)


def teacher_targets(teacher: np.ndarray, power: float) -> np.ndarray:
    """The head's targets from one language's bag-of-words theta: each topic divided by its mean over that
    language's training documents (to `power`; 0 leaves the teacher as is), rows renormalised.

    Why: a bag-of-words encoder gives every document of its language a share of a few background topics,
    a prior the other language's encoder does not share (Rakuten_Amazon's 10-epoch NMTM: one topic tops
    81% of the English reviews and 6% of the Japanese ones). Distilled as is, the head learns that prior
    as content, and the consistency terms, which ask translations for one theta, spread it to everything
    far from the training documents: every Kyoto Wikipedia article got that one topic. Divided by its
    language's mean, a theta says which topics the document has more of than its language's average;
    the ranking among documents of one language is unchanged. docs/contextual.md "Choice 5"."""
    if not power:
        return teacher
    lift = teacher / np.maximum(teacher.mean(0), 1e-12) ** power
    return (lift / lift.sum(1, keepdims=True)).astype(teacher.dtype)


def _rows(features: Any, idx: np.ndarray) -> Any:
    return features[torch.from_numpy(idx)] if torch.is_tensor(features) else [features[i] for i in idx.tolist()]


def _batches(sizes: list[int], batch_size: int, rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
    """(language, rows) batches covering every document once, languages interleaved at random."""
    out = [(i, order[s:s + batch_size]) for i, n in enumerate(sizes)
           for order in [rng.permutation(n)] for s in range(0, n, batch_size)]
    return [out[j] for j in rng.permutation(len(out))]


@torch.no_grad()
def embed_all(encoder: TrainableSentenceEncoder, features: Any, batch_size: int = 512) -> Tensor:
    was = encoder.trainable().training
    encoder.trainable().eval()
    n = len(features)
    parts = [encoder.embed(_rows(features, np.arange(s, min(s + batch_size, n)))) for s in range(0, n, batch_size)]
    encoder.trainable().train(was)
    return torch.cat(parts) if parts else torch.zeros(0, encoder.embedding_dim)


def finetune_encoder(encoder: TrainableSentenceEncoder, data: list[_LangData], cfg: ContextualConfig,
                     rng: np.random.Generator) -> list[float]:
    """Seed 002's topic-classification fine-tuning: encoder + linear classifier on argmax topics."""
    K = data[0].teacher.shape[1]
    module = encoder.trainable().train()
    clf = torch.nn.Linear(encoder.embedding_dim, K)
    params = [p for p in module.parameters() if p.requires_grad] + list(clf.parameters())
    opt = torch.optim.Adam(params, lr=cfg.finetune_lr)
    labels = [torch.from_numpy(teacher_targets(d.teacher, cfg.teacher_debias).argmax(1)) for d in data]
    losses = []
    for epoch in range(cfg.finetune_epochs):
        total = count = 0.0
        for li, rows in _batches([len(d.teacher) for d in data], cfg.finetune_batch_size, rng):
            emb = encoder.embed(_rows(data[li].features, rows))
            loss = F.cross_entropy(clf(emb), labels[li][torch.from_numpy(rows)])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(rows)
            count += len(rows)
        losses.append(total / max(count, 1))
        if cfg.progress:
            logger.info(f"fine-tune epoch {epoch + 1}/{cfg.finetune_epochs}: topic-classification loss "
                        f"{losses[-1]:.4f}")
    module.eval()
    return losses


@torch.no_grad()
def mine_pairs(x: Tensor, y: Tensor, k: int = 4, block: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pseudo-parallel pairs between two sets of unit embeddings: mutual best matches under the ratio
    margin score(a, b) = cos(a, b) / ((knn_mean(a) + knn_mean(b)) / 2), knn_mean = mean cosine of the k
    nearest neighbours in the other set (Artetxe & Schwenk 2019). The margin discounts hubs, which plain
    cosine pairs with everything, and mutuality drops documents without a counterpart. Returns rows of
    x, rows of y and scores, best first."""
    if len(x) == 0 or len(y) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    k = min(k, len(x), len(y))

    def knn_mean(a: Tensor, b: Tensor) -> Tensor:
        return torch.cat([(a[s:s + block] @ b.T).topk(k, dim=1).values.mean(1) for s in range(0, len(a), block)])

    def best(a: Tensor, b: Tensor, ra: Tensor, rb: Tensor) -> tuple[Tensor, Tensor]:
        parts = [((a[s:s + block] @ b.T) / ((ra[s:s + block, None] + rb[None, :]) / 2)).max(1)
                 for s in range(0, len(a), block)]
        return torch.cat([p.indices for p in parts]), torch.cat([p.values for p in parts])

    rx, ry = knn_mean(x, y), knn_mean(y, x)
    fx, sx = best(x, y, rx, ry)
    fy, _ = best(y, x, ry, rx)
    i = torch.arange(len(x))
    mutual = fy[fx] == i
    i_np, j_np, s_np = i[mutual].numpy(), fx[mutual].numpy(), sx[mutual].numpy()
    order = np.argsort(-s_np, kind="stable")
    return i_np[order], j_np[order], s_np[order]


def symmetric_kl(logits_a: Tensor, logits_b: Tensor) -> Tensor:
    """Mean symmetric KL between the softmaxes of two logit batches (both sides get gradients)."""
    la, lb = F.log_softmax(logits_a, dim=1), F.log_softmax(logits_b, dim=1)
    return 0.5 * ((la.exp() * (la - lb)).sum(1) + (lb.exp() * (lb - la)).sum(1)).mean()


@dataclass
class MinedPairs:
    """Pseudo-parallel training documents of two languages (rows of data[a] and data[b])."""

    a: int
    b: int
    rows_a: np.ndarray
    rows_b: np.ndarray
    scores: np.ndarray

    def stats(self, data: list[_LangData], labels: list[np.ndarray | None], debias: float = 0.0) -> dict[str, Any]:
        """What contextual.json records: how many pairs, and how often their teacher topics (raw, and as the
        head's targets: teacher_targets with `debias`) and labels, where the corpus has them, agree: a check
        on the mining and on the teachers' alignment, not used by training."""
        out: dict[str, Any] = {"languages": [data[self.a].lang, data[self.b].lang], "pairs": int(len(self.rows_a)),
                               "min_margin": float(self.scores.min()) if len(self.scores) else None}
        if len(self.rows_a):
            for key, a, b in (("teacher", data[self.a].teacher, data[self.b].teacher),
                              ("target", teacher_targets(data[self.a].teacher, debias),
                               teacher_targets(data[self.b].teacher, debias))):
                out[f"{key}_top_topic_match"] = float((a[self.rows_a].argmax(1) == b[self.rows_b].argmax(1)).mean())
            la, lb = labels[self.a], labels[self.b]
            if la is not None and lb is not None:
                out["label_match"] = float((la[self.rows_a] == lb[self.rows_b]).mean())
        return out


def mine_training_pairs(embeddings: list[Tensor], k: int) -> list[MinedPairs]:
    """Mutual margin-based pairs between the first training language and each other one."""
    first = F.normalize(embeddings[0], dim=1)
    out = []
    for b in range(1, len(embeddings)):
        ia, ib, sc = mine_pairs(first, F.normalize(embeddings[b], dim=1), k)
        out.append(MinedPairs(0, b, ia, ib, sc))
    return out


def add_parallel_pairs(parallel: ParallelText, encoder: TrainableSentenceEncoder, data: list[_LangData],
                       embeddings: list[Tensor], pairs: list[MinedPairs], cache: Path, progress: bool,
                       ) -> tuple[list[Tensor], list[MinedPairs], dict[str, Any]]:
    """The user's translations (`--parallel`) as one more pair set, anchored on the first training language:
    their two sides' embeddings are appended after the training languages' (so the set's indices point past
    `data`), pairs in file order. Returns the embeddings, the pair sets and what contextual.json records."""
    left, right, counts = parallel.pairs(data[0].lang)
    logger.info(f"parallel text {parallel.file}: {len(left)} pairs (" + ", ".join(f"{k} {v}" for k, v in counts.items())
                + ")")
    sides = [embed_all(encoder, encoder.features(texts, cache, progress)) for texts in (left, right)]
    rows = np.arange(len(left))
    extra = MinedPairs(len(embeddings), len(embeddings) + 1, rows, rows, np.ones(len(left), np.float32))
    summary = {"file": parallel.file, "sha256": parallel.sha256, "pairs": len(left), "languages": dict(counts)}
    return [*embeddings, *sides], [*pairs, extra], summary


def head_loss(head: ContextualHead, model: CrossLingualTopicModel, emb: Tensor, teacher: Tensor, bow: Any,
              lang_index: int, cfg: ContextualConfig) -> Tensor:
    """The loss of one batch of documents of one language. The teacher terms (distillation or CTM, topic
    classification) count fully for the first training language and `cfg.teacher_others` for the others."""
    mu, logvar = head(emb)
    if cfg.objective == "distill":
        # KL(teacher || student) = cross-entropy minus the teacher's (constant) entropy.
        log_student = F.log_softmax(mu, dim=1)
        loss = (teacher * (teacher.clamp_min(1e-12).log() - log_student)).sum(1).mean()
    else:
        from xtm.models_zoo.components import reconstruction_nll, reparameterize

        theta = F.softmax(reparameterize(mu, logvar, True), dim=1)
        with torch.no_grad():
            beta = model.topic_word()[lang_index]
        log_probs = model.decoders[lang_index](theta, beta)
        loss = (reconstruction_nll(bow, log_probs) + model.prior.kl(mu, logvar)).mean()
    if cfg.lambda_tc > 0:
        loss = loss + cfg.lambda_tc * F.cross_entropy(mu, teacher.argmax(1))
    # Scaled, not skipped at 0: the batch's loss then stays a function of the head even when no other term
    # applies (teacher_others 0 without noise or pair terms), and backward has something to run.
    loss = (1.0 if lang_index == 0 else cfg.teacher_others) * loss
    if cfg.lambda_smooth > 0:
        noisy = F.normalize(emb + cfg.smooth_sigma * torch.randn_like(emb), dim=1)
        with without_dropout(head):
            loss = loss + cfg.lambda_smooth * symmetric_kl(head(emb)[0], head(noisy)[0])
    return loss


@contextlib.contextmanager
def without_dropout(head: ContextualHead) -> Iterator[None]:
    """The consistency terms compare the head's function at two inputs (a document and its translation, an
    embedding and its noisy copy); under two independent dropout masks they would also ask the output not to
    depend on the mask, which a constant output satisfies best: with dropout 0.5 that collapsed the
    disagreeing-teachers test to one topic (400/400 documents at seeds 0 and 2). Gradients flow as usual;
    dropout still regularises the distillation and topic-classification terms. docs/contextual.md Choice 7."""
    was = head.training
    head.eval()
    try:
        yield
    finally:
        head.train(was)


def pair_loss(head: ContextualHead, embeddings: list[Tensor], pairs: MinedPairs, sel: np.ndarray,
              device: torch.device) -> Tensor:
    """Symmetric KL between the head's theta of the selected mined pairs (cross-lingual consistency), without
    dropout (`without_dropout`)."""
    ea = embeddings[pairs.a][torch.from_numpy(pairs.rows_a[sel])].to(device)
    eb = embeddings[pairs.b][torch.from_numpy(pairs.rows_b[sel])].to(device)
    with without_dropout(head):
        return symmetric_kl(head(ea)[0], head(eb)[0])


def fit_head(encoder_dim: int, model: CrossLingualTopicModel, data: list[_LangData], embeddings: list[Tensor],
             cfg: ContextualConfig, rng: np.random.Generator, device: torch.device,
             pairs: list[MinedPairs] | None = None) -> tuple[ContextualHead, list[float]]:
    if cfg.objective == "ctm" and not (hasattr(model, "decoders") and hasattr(model, "prior")):
        raise XtmError(f"--objective ctm needs a VAE backbone with a decoder per language; {model.name} has none "
                       "(use --objective distill)")
    K = model.num_topics
    head = ContextualHead(HeadConfig(in_dim=encoder_dim, num_topics=K, hidden=cfg.hidden, dropout=cfg.dropout))
    head.to(device).train()
    model.to(device).eval()  # frozen: its decoder's batch norm keeps its training statistics
    for p in model.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    teachers = [torch.from_numpy(teacher_targets(d.teacher, cfg.teacher_debias)) for d in data]
    pair_sets = [p for p in (pairs or []) if len(p.rows_a) >= 2] if cfg.lambda_xl > 0 else []
    losses = []
    for epoch in range(cfg.epochs):
        total = count = 0.0
        # Each step also reads one batch of mined pairs, cycling through them in a new order every epoch.
        pair_orders = [rng.permutation(len(p.rows_a)) for p in pair_sets]
        for step, (li, rows) in enumerate(_batches([len(d.teacher) for d in data], cfg.batch_size, rng)):
            if len(rows) < 2:
                continue
            idx = torch.from_numpy(rows)
            bow = sparse_batch(data[li].bow, rows, device) if cfg.objective == "ctm" else None
            loss = head_loss(head, model, embeddings[li][idx].to(device), teachers[li][idx].to(device), bow,
                             data[li].index, cfg)
            if pair_sets:
                ps = step % len(pair_sets)
                order = pair_orders[ps]
                nb = max(1, len(order) // cfg.batch_size)
                sel = order[((step // len(pair_sets)) % nb) * cfg.batch_size:][:cfg.batch_size]
                loss = loss + cfg.lambda_xl * pair_loss(head, embeddings, pair_sets[ps], sel, device)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(rows)
            count += len(rows)
        losses.append(total / max(count, 1))
        if cfg.progress:
            logger.info(f"head epoch {epoch + 1}/{cfg.epochs}: {cfg.objective} loss {losses[-1]:.4f}")
    return head.eval(), losses


# -- evaluation -----------------------------------------------------------------------------------

def agreement(bow_theta: np.ndarray, ctx_theta: np.ndarray) -> dict[str, float]:
    """Top-topic match (share of documents) and mean KL(bow || ctx) between the two routes."""
    eps = 1e-10
    kl = (bow_theta * (np.log(bow_theta + eps) - np.log(ctx_theta + eps))).sum(1)
    return {"match": float((bow_theta.argmax(1) == ctx_theta.argmax(1)).mean()), "kl": float(kl.mean()),
            "docs": int(len(bow_theta))}


@torch.no_grad()
def head_theta(head: ContextualHead, emb: Tensor, batch_size: int = 4096) -> np.ndarray:
    parts = [head.theta(emb[s:s + batch_size]).cpu().numpy() for s in range(0, len(emb), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, head.cfg.num_topics), np.float32)


# -- the whole step -------------------------------------------------------------------------------

def fit_after_training(run_dir: str | Path, train: TrainConfig, required: bool = False) -> dict[str, Any] | None:
    """The contextual route fitted right after training (xtm-train, and xtm.train), with xtm-contextual's
    defaults on the run's seed and machine settings; its metrics.

    Fitted by default, so a run that cannot have it (a benchmark directory without document texts, a missing
    encoder package) still finishes as a trained run: a warning says why and how to add it later, the bundle
    reads the training languages only, and None is returned. `required` (--contextual) makes that an error."""
    cfg = ContextualConfig(seed=train.seed, device=train.device, threads=train.threads, cache_dir=train.cache_dir,
                           progress=train.progress)
    try:
        return train_contextual(run_dir, cfg)
    except (XtmError, ImportError) as e:
        if required:
            raise
        logger.warning(f"no contextual route ({e}); bundles of this run read only its training languages "
                       f"(add it later: xtm-contextual {run_dir})")
        return None


def train_contextual(run_dir: str | Path, cfg: ContextualConfig) -> dict[str, Any]:
    """Fit and save RUN_DIR/contextual/; returns its metrics."""
    cfg.check()
    parse_encoder_name(cfg.encoder)  # a misspelt encoder is refused before the run and its corpus are read
    check_contextual_replaceable(Path(run_dir))  # and a contextual/ holding the user's files, before the fit
    parallel = read_parallel(cfg.parallel) if cfg.parallel is not None else None  # a bad file fails here too
    t0 = time.perf_counter()
    device = pick_device(cfg.device)
    with torch_threads(cfg.threads, device):
        return _fit_and_save(Path(run_dir), cfg, parallel, device, t0)


def _fit_and_save(run_dir: Path, cfg: ContextualConfig, parallel: ParallelText | None, device: torch.device,
                  t0: float) -> dict[str, Any]:
    """train_contextual's work under its thread count (t0: when the call began, for metrics' seconds)."""
    cache = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    config, model = load_trained_model(run_dir)
    teacher_digest = state_digest(model)  # the state the head learns from, as loaded
    corpus = load_run_corpus(run_dir, config, cfg.progress)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    encoder = make_text_encoder(cfg.encoder, cfg.max_tokens)
    logger.info(f"{cfg.encoder}: features of {sum(lc.num_train for lc in corpus.languages)} training documents")
    data: list[_LangData] = []
    for i, lc in enumerate(corpus.languages):
        teacher = infer_theta(model, lc.train_bow, i, torch.device("cpu"))
        data.append(_LangData(lc.lang, i, encoder.features(lc.train_texts, cache, cfg.progress), teacher, lc.train_bow))

    ft_losses: list[float] = []
    if cfg.finetune_epochs:
        logger.info(f"fine-tuning {cfg.encoder} on topic classification ({cfg.finetune_epochs} epochs)")
        ft_losses = finetune_encoder(encoder, data, cfg, rng)
    embeddings = [embed_all(encoder, d.features) for d in data]
    pairs: list[MinedPairs] = []
    pair_stats: list[dict[str, Any]] = []
    if cfg.lambda_xl > 0 and len(data) > 1:
        pairs = mine_training_pairs(embeddings, cfg.xl_neighbors)
        labels = [np.asarray(lc.train_labels).ravel() if lc.train_labels is not None else None
                  for lc in corpus.languages]
        pair_stats = [p.stats(data, labels, cfg.teacher_debias) for p in pairs]
        logger.info("mined pseudo-parallel pairs: " + ", ".join(f"{'-'.join(st['languages'])} {st['pairs']}"
                                                               for st in pair_stats))
    pair_embeddings, parallel_summary = embeddings, None
    if parallel is not None:
        pair_embeddings, pairs, parallel_summary = add_parallel_pairs(parallel, encoder, data, embeddings, pairs,
                                                                      cache, cfg.progress)
    logger.info(f"fitting the head ({cfg.objective}"
                + (f" + {cfg.lambda_tc} x topic classification" if cfg.lambda_tc else "")
                + (f" + {cfg.lambda_xl} x cross-lingual consistency" if pairs else "")
                + (f" + {cfg.lambda_smooth} x noise consistency" if cfg.lambda_smooth else "")
                + f", {cfg.epochs} epochs)")
    with _head_threads(cfg, device):
        head, losses = fit_head(encoder.embedding_dim, model, data, pair_embeddings, cfg, rng, device, pairs)
    head.cpu()

    metrics = evaluate_contextual(model, corpus, encoder, head, embeddings, data, cache, cfg.progress)
    _warn_if_bags_of_words_serve_better(metrics, cfg, run_dir)
    metrics.update({"seconds": time.perf_counter() - t0, "head_loss": losses, "finetune_loss": ft_losses})
    if pair_stats:
        metrics["mined_pairs"] = pair_stats
    if parallel_summary is not None:
        metrics["parallel_pairs"] = parallel_summary
    save_contextual(run_dir, cfg, encoder, head, metrics, teacher=teacher_digest)
    logger.info(f"wrote {run_dir / CONTEXTUAL_DIR} in {metrics['seconds']:.0f}s")
    return metrics


# The contextual route's mean test accuracy this far under the bags of words' is said: on a small corpus the head
# learns its teacher poorly (a newcomer's 400 Korean reviews: topic purity 0.48 against 0.61). Top-topic agreement
# alone would mislead: Rakuten's NMTM agrees on 24% of Japanese documents while its route classifies better.
ROUTE_SHORTFALL = 0.05


def _warn_if_bags_of_words_serve_better(metrics: dict[str, Any], cfg: ContextualConfig, run_dir: Path) -> None:
    cells = metrics.get("classification")
    if not cells or cfg.auto_route == "bow":
        return
    bow, ctx = (float(np.mean(list(cells[route].values()))) for route in ("bow", "contextual"))
    if ctx < bow - ROUTE_SHORTFALL:
        logger.warning(f"the contextual route classifies this run's test documents worse than the bags of words "
                       f"(mean accuracy {ctx:.2f} against {bow:.2f}), and bundles serve the training languages with "
                       f"it by default: `xtm-contextual {run_dir} --auto-route bow` keeps it for the other languages "
                       "only (a larger corpus narrows the gap)")


@contextlib.contextmanager
def _head_threads(cfg: ContextualConfig, device: torch.device) -> Iterator[None]:
    """One torch thread for the head's steps on a CPU unless --threads says otherwise. Its matrices are
    small (a batch x 512 x 200), so threads gain little and, on a busy machine, spin against each other:
    measured on 2 cores at load average 6, the example's 120 steps took 116 s with 2 threads, 2 s with 1.
    Embedding and mining keep every thread."""
    if cfg.threads or device.type != "cpu":
        yield
        return
    with thread_count(1):
        yield


def evaluate_contextual(model: CrossLingualTopicModel, corpus: Corpus, encoder: TrainableSentenceEncoder,
                        head: ContextualHead, train_emb: list[Tensor], data: list[_LangData], cache: Path | None,
                        progress: bool) -> dict[str, Any]:
    from xtm.evaluation.metrics import classification, unclassifiable_note

    out: dict[str, Any] = {"train_agreement": {}, "test_agreement": {}}
    train_ctx, test_ctx, test_bow = {}, {}, {}
    for d, emb, lc in zip(data, train_emb, corpus.languages, strict=True):
        train_ctx[d.lang] = head_theta(head, emb)
        out["train_agreement"][d.lang] = agreement(d.teacher, train_ctx[d.lang])
        if lc.test_bow is not None and lc.test_texts is not None and lc.test_bow.shape[0]:
            test_bow[d.lang] = infer_theta(model, lc.test_bow, d.index, torch.device("cpu"))
            test_ctx[d.lang] = head_theta(head, embed_all(encoder, encoder.features(lc.test_texts, cache, progress)))
            out["test_agreement"][d.lang] = agreement(test_bow[d.lang], test_ctx[d.lang])
    single = unclassifiable_note(corpus) if corpus.has_labels else None
    if single is not None:  # a language with one label: the route is still fitted and saved, without this metric
        out["classification_note"] = single
    elif corpus.has_labels and set(test_ctx) == set(corpus.langs):
        train_labels = {lc.lang: lc.train_labels for lc in corpus.languages}
        test_labels = {lc.lang: lc.test_labels for lc in corpus.languages}
        train_bow = {d.lang: d.teacher for d in data}
        out["classification"] = {
            "bow": classification(train_bow, train_labels, test_bow, test_labels),
            "contextual": classification(train_ctx, train_labels, test_ctx, test_labels),
        }
    return out


def save_contextual(run_dir: Path, cfg: ContextualConfig, encoder: TrainableSentenceEncoder, head: ContextualHead,
                    metrics: dict[str, Any], teacher: str | None = None) -> Path:
    """contextual/ replaced by this fit. teacher: `state_digest` of the run's model the head learned from (export
    leaves the route out of a bundle of another state of the run: a resumed, longer run)."""
    from safetensors.torch import save_file

    final = run_dir / CONTEXTUAL_DIR
    with staged_directory(final) as tmp:  # removed on any error; an old contextual/ stays whole until swapped
        save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
                  str(tmp / "head.safetensors"))
        enc_meta = encoder.save(tmp) if cfg.finetune_epochs else {"encoder": encoder.name,
                                                                   "max_tokens": cfg.max_tokens}
        write_json(tmp / META, {
            "format": CONTEXTUAL_FORMAT, "xtm_version": xtm.__version__, **enc_meta,
            "finetuned": bool(cfg.finetune_epochs), "embedding_dim": encoder.embedding_dim,
            # what `--route auto` serves the training languages with in this run's bundles (absent in
            # contextual.json files from before issue 14: their bundles keep the bags of words)
            "auto_route": cfg.auto_route,
            "languages": list(encoder.languages), "head": head.cfg.to_dict(), "head_file": "head.safetensors",
            "config": cfg.to_dict(), "metrics": _json_safe(metrics),
            **({"teacher_sha256": teacher} if teacher is not None else {})})
        check_contextual_replaceable(run_dir)  # again: files may have been added while the fit ran
    return final


# What a fit writes in contextual/ (save_contextual and the encoders' `save`): these names have never changed.
FIT_FILES = frozenset({META, "head.safetensors", "encoder_top.safetensors", "encoder"})
FIT_DIRS = frozenset({"encoder"})  # of them, the directories (a fine-tuned sentence-transformers model)


def check_contextual_replaceable(run_dir: Path) -> None:
    """XtmError unless RUN_DIR/contextual/ is absent or holds only what a fit wrote, which a new fit replaces
    whole. A user's file there (notes beside the model) is refused, not deleted and not carried over: the
    directory is the fit's output, and a file kept across refits could be taken for part of it (the
    rule in docs/reliability.md: a user's files are never deleted unless provably ours)."""
    d = run_dir / CONTEXTUAL_DIR
    if not os.path.lexists(d):
        return
    if d.is_symlink() or not d.is_dir():
        raise XtmError("is not a directory a fit wrote (a symlink or a file): move it away, then fit again", path=d)
    files, dirs = _fit_names(d)
    try:
        foreign = foreign_entries(d, files.__contains__, is_our_dir=dirs.__contains__)
    except OSError as e:
        raise XtmError(f"cannot read the contextual directory: {e.strerror or e}", path=d) from e
    if foreign:
        listed = ", ".join(repr(n) for n in foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise XtmError(f"holds {listed}, not written by xtm-contextual (a new fit replaces the whole directory): "
                       "move what is yours elsewhere, then fit again", path=d)


def _fit_names(d: Path) -> tuple[frozenset[str], frozenset[str]]:
    """The files and the directories of contextual/ a fit wrote: contextual.json and what it names when it is a
    contextual.json xtm wrote (a USE fit without fine-tuning left no encoder/; one found there is not ours), else
    every name a fit writes (contextual.json missing or damaged: what is left can only be proven ours by its name)."""
    try:
        meta = read_json(d / META) if (d / META).is_file() else None
    except XtmError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != CONTEXTUAL_FORMAT or "xtm_version" not in meta:
        return FIT_FILES - FIT_DIRS, FIT_DIRS

    def named(*keys: str) -> set[str]:
        return {n for n in map(meta.get, keys) if isinstance(n, str) and is_plain_file_name(n)}

    return frozenset({META, *named("head_file", "encoder_top")}), frozenset(named("encoder_dir"))


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


@dataclass
class LoadedContextual:
    meta: dict[str, Any]
    encoder: TrainableSentenceEncoder
    head: ContextualHead


def has_contextual(run_dir: str | Path) -> bool:
    """Whether the run holds a fitted contextual route (its contextual.json; load_contextual_meta checks it)."""
    return (Path(run_dir) / CONTEXTUAL_DIR / META).is_file()


def load_contextual_meta(run_dir: str | Path) -> dict[str, Any]:
    """RUN_DIR/contextual/contextual.json, checked to be one this xtm reads."""
    d = Path(run_dir) / CONTEXTUAL_DIR
    meta_path = d / META
    if not meta_path.is_file():
        raise XtmError("the run has no contextual network: train one with `xtm-contextual RUN_DIR` "
                       "(or xtm-train --contextual)", path=d)
    meta = read_json(meta_path)
    if not isinstance(meta, dict) or meta.get("format") != CONTEXTUAL_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise XtmError(f"contextual format {found!r} is not supported (this xtm reads "
                       f"{CONTEXTUAL_FORMAT})", path=meta_path)
    teacher = meta.get("teacher_sha256")
    if teacher is not None and not (isinstance(teacher, str) and len(teacher) == 64):
        raise XtmError(f"teacher_sha256 must be a SHA-256 in hex, got {teacher!r:.80}", path=meta_path)
    return meta


def load_contextual(run_dir: str | Path) -> LoadedContextual:
    """RUN_DIR/contextual/ back as (metadata, encoder with its fine-tuned weights, head in eval mode)."""
    from safetensors.torch import load_file

    d = Path(run_dir) / CONTEXTUAL_DIR
    meta_path = d / META
    meta = load_contextual_meta(run_dir)
    for key in ("head_file", "encoder_top", "encoder_dir"):
        _check_file_name(meta, key, meta_path)
    head = ContextualHead(_head_config(meta.get("head"), meta_path))
    head_path = d / meta.get("head_file", "head.safetensors")
    try:
        head.load_state_dict(load_file(str(head_path)))
    except Exception as e:  # SafetensorError, OSError, or tensors of other names or shapes
        raise XtmError(f"cannot load the contextual head: {type(e).__name__}: {str(e)[:300]}", path=head_path) from None
    return LoadedContextual(meta=meta, encoder=load_text_encoder(d, meta), head=head.eval())


def _check_file_name(meta: dict[str, Any], key: str, meta_path: Path) -> None:
    """A file contextual.json names must be a plain name inside contextual/ ("../../etc/passwd" was opened)."""
    if key not in meta or (key != "head_file" and not meta[key]):  # (encoder_top, encoder_dir: optional)
        return
    name = meta[key]
    if not isinstance(name, str) or not is_plain_file_name(name):
        raise XtmError(f"field '{key}': expected a file name inside contextual/, got {name!r:.80}", path=meta_path)


def _head_config(head: Any, meta_path: Path) -> HeadConfig:
    """HeadConfig from contextual.json's "head", every field typed and bounded (an in_dim of 10**12 was an
    800 TB allocation; a missing or mistyped head a KeyError or TypeError)."""
    bounds = {"in_dim": (1, 100_000), "num_topics": (1, 100_000), "hidden": (1, 100_000)}
    if not isinstance(head, dict) or not {"in_dim", "num_topics"} <= head.keys() or \
            not head.keys() <= {*bounds, "dropout"}:
        raise XtmError(f"field 'head': expected in_dim, num_topics, hidden and dropout, got {head!r:.120}",
                       path=meta_path)
    for key, (low, high) in bounds.items():
        value = head.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise XtmError(f"field 'head.{key}': expected a whole number from {low} to {high:,}, got {value!r:.40}",
                           path=meta_path)
    dropout = head.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise XtmError(f"field 'head.dropout': expected a number from 0 to below 1, got {dropout!r:.40}",
                       path=meta_path)
    return HeadConfig(**head)
