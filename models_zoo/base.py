"""The one small interface every cross-lingual backbone implements.

The trainer, the evaluation and the exporters only use what is declared here:
  - `forward(bows, rows, extra)` -> dict of loss tensors, "loss" being the total to minimise;
                           `extra(thetas, betas, rows)` adds terms computed from the step's
                           theta and beta (LLM-XTM phase 2 uses it);
  - `theta(bow, i)`       -> document-topic distributions for language i (deterministic, eval);
  - `encoder_for(i)`      -> an nn.Module bow -> theta for language i (what gets exported);
  - `topic_word()`        -> per-language topic-word weights [K, V_i] (top words, beta export);
  - `config()`            -> JSON-able hyper-parameters that rebuild the model with `aux`.

Corpus-derived tensors a model needs (dictionary links, word vectors, ...) are computed once by
`prepare_aux(corpus, ...)` and registered as buffers named `aux_*`, so a checkpoint (safetensors)
alone rebuilds the model: no pickle, no corpus needed to export.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xtm.corpus import Corpus
from xtm.errors import XtmError
from xtm.models_zoo.components import BowEncoder, reparameterize

_NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}

# Valid ranges of the numeric hyper-parameters where "a finite number >= 0" (the rule for every other
# one; a whole number where the default is one) is too loose: (low, high, low open, high open). They
# come from --set and from a saved config.json, either of which may hold anything JSON does.
_HPARAM_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    **{k: (1, 100_000, False, False) for k in ("hidden", "global_hidden", "share_dim", "beta_proj_dim")},
    "dropout": (0, 1, False, True), "bn_momentum": (0, 1, False, False), "bn_eps": (0, 1, True, False),
    "alpha": (0, float("inf"), True, True), "tau": (0, float("inf"), True, True),
    "tau_cluster": (0, float("inf"), True, True), "tami_every": (1, 1_000_000, False, False),
    "mi_decay_from": (0, 1, False, False), "mi_floor": (0, 1, False, False), "lam": (0, 1, False, False),
    "pos_threshold": (-1, 1, False, False), "min_similarity": (-1, 1, False, False),
    "neighbours": (0, 10_000, False, False), "same_neighbours": (0, 10_000, False, False),
}
_WHOLE = {"global_hidden", "same_neighbours"}  # whole numbers whose default is None


def check_hparam(model: str, key: str, value: Any, default: Any) -> None:
    """XtmError naming the hyper-parameter unless `value` is valid for a numeric one (see _HPARAM_RANGES);
    other kinds (words, switches) are checked by their model."""
    whole = key in _WHOLE or (isinstance(default, int) and not isinstance(default, bool))
    if value is None and default is None:
        return
    if not (isinstance(default, (int, float)) and not isinstance(default, bool)) and key not in _WHOLE:
        return
    low, high, low_open, high_open = _HPARAM_RANGES.get(key, (0, float("inf"), False, True))
    number = not isinstance(value, bool) and isinstance(value, int if whole else (int, float))
    if not (number and math.isfinite(value) and (low < value if low_open else low <= value)
            and (value < high if high_open else value <= high)):
        kind = "a whole number" if whole else "a number"
        span = f"{'above' if low_open else 'at least'} {low:,g}"
        if high != float("inf"):
            span += f" and {'below' if high_open else 'at most'} {high:,}"
        raise XtmError(f"{model}: {key} must be {kind} {span}, got {value!r}")

# Extra loss terms from a step's per-language theta [B, K] and beta [K, V_l] and document rows.
ExtraLosses = Callable[[list[Tensor], list[Tensor], "list[Tensor] | None"], dict[str, Tensor]]


@dataclass
class BuildContext:
    """What building a model may need besides the corpus: a cache for embeddings, the seed."""

    cache_dir: Path | None = None
    seed: int = 0
    progress: bool = False
    # Results a model computes while preparing its aux tensors and reuses right after
    # (XTRA's embeddings and clusters): shared between the build steps, never saved.
    scratch: dict[str, Any] = field(default_factory=dict)


class ThetaEncoder(nn.Module):
    """Deterministic bow -> theta (softmax of the posterior mean): what inference and export run."""

    def __init__(self, encoder: BowEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, bow: Tensor) -> Tensor:
        mu, _ = self.encoder(bow)
        return F.softmax(mu, dim=1)


class CrossLingualTopicModel(nn.Module):
    """Base class: per-language encoders, K shared topics, per-language topic-word matrices."""

    name: ClassVar[str] = "base"
    defaults: ClassVar[dict[str, Any]] = {}
    # What the backbone can train on, declared here and compared with a run in one place only
    # (xtm.models_zoo.registry.check_capabilities, and `check_languages` below):
    # how many languages it models together;
    num_languages: ClassVar[int] = 2
    # whether it aligns topics through bilingual dictionary links (and so needs some);
    needs_dictionary: ClassVar[bool] = False
    # whether it reads the links at all (GloCTM uses them when given; XTRA never): a resumed run must then have
    # the checkpoint's;
    reads_links: ClassVar[bool] = True
    # why it cannot train from a streamed (out-of-core) corpus; None when it can: it then needs
    # from the corpus only vocabularies, links, word vectors and word counts.
    in_memory_only: ClassVar[str | None] = None
    # state-dict entries that saves from older versions may lack (they keep their initial value)
    optional_state: ClassVar[tuple[str, ...]] = ()
    # hyper-parameters added after models were first saved, with the value a save that lacks them was
    # trained with (which may differ from today's default): see `saved_hparams`
    legacy_hparams: ClassVar[dict[str, Any]] = {}

    # Where training stands, set by the training loop before every step: 0 at phase 1's first step, 1
    # after its last, above 1 in phase 2. A loss weight scheduled over training reads it; being a function
    # of the step (not saved state), a resumed run continues on the same schedule.
    training_position: float = 0.0

    def __init__(self, langs: list[str], vocab_sizes: list[int], num_topics: int,
                 aux: dict[str, Tensor] | None = None, **hparams: Any) -> None:
        super().__init__()
        self.check_languages(langs)
        if len(vocab_sizes) != len(langs):
            raise XtmError(f"{self.name}: {len(vocab_sizes)} vocabulary sizes for {len(langs)} languages")
        self.check_hparams(hparams)
        self.langs = list(langs)
        self.vocab_sizes = [int(v) for v in vocab_sizes]
        self.num_topics = int(num_topics)
        self.hparams = {**self.defaults, **hparams}
        for key, value in (aux or {}).items():
            self.register_buffer(f"aux_{key}", value)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def prepare_aux(cls, corpus: Corpus, num_topics: int, context: BuildContext,
                    **hparams: Any) -> dict[str, Tensor]:
        """Tensors computed once from the corpus (links, neighbour masks...). Default: none."""
        return {}

    @classmethod
    def check_hparams(cls, hparams: dict[str, Any]) -> None:
        """Refuse unknown hyper-parameters and numeric values out of range (check_hparam)."""
        unknown = set(hparams) - set(cls.defaults)
        if unknown:
            raise XtmError(f"{cls.name}: unknown hyper-parameters {sorted(unknown)}; known: {sorted(cls.defaults)}")
        for key, value in hparams.items():
            check_hparam(cls.name, key, value, cls.defaults[key])

    @classmethod
    def from_corpus(cls, corpus: Corpus, num_topics: int, context: BuildContext | None = None,
                    **hparams: Any) -> CrossLingualTopicModel:
        cls.check_languages(corpus.langs)
        cls.check_hparams(hparams)  # before prepare_aux reads them
        context = context or BuildContext()
        aux = cls.prepare_aux(corpus, num_topics, context, **{**cls.defaults, **hparams})
        model = cls(corpus.langs, [lc.vocab_size for lc in corpus.languages], num_topics, aux=aux, **hparams)
        model.prepare_training(corpus, context)
        return model

    @classmethod
    def check_languages(cls, langs: Sequence[str]) -> None:
        """Refuse a corpus (or a saved model's config) with another number of languages than the model's."""
        if len(langs) != cls.num_languages:
            count = _NUMBERS.get(cls.num_languages, str(cls.num_languages))
            raise XtmError(f"{cls.name} models exactly {count} languages; the data has {len(langs)} "
                           f"({', '.join(map(str, langs))}): choose {count} with --langs (xtm.train: "
                           "model_langs=[...])")

    def prepare_training(self, corpus: Corpus, context: BuildContext) -> None:
        """Attach per-document training data (not saved in checkpoints). Default: nothing."""

    @classmethod
    def saved_hparams(cls, saved: dict[str, Any]) -> dict[str, Any]:
        """The hyper-parameters a saved model was trained with, from its config's "hparams": a key added
        since takes the value the model had before the key existed, not today's default."""
        return {**cls.legacy_hparams, **saved}

    def schedule_spans_epochs(self) -> bool:
        """Whether a loss weight follows a schedule over phase 1's --epochs (a resumed run must then keep
        them: its schedule would move otherwise). Default: no."""
        return False

    def config(self) -> dict[str, Any]:
        return {"model": self.name, "langs": self.langs, "vocab_sizes": self.vocab_sizes,
                "num_topics": self.num_topics, "hparams": dict(self.hparams)}

    # ---- the interface ------------------------------------------------------------------------
    encoders: nn.ModuleList

    def encoder_for(self, lang_index: int) -> nn.Module:
        return ThetaEncoder(self.encoders[lang_index])

    def encode(self, bow: Tensor, lang_index: int) -> tuple[Tensor, Tensor, Tensor]:
        """(theta, mu, logvar) for training: theta is sampled when the module is in train mode."""
        mu, logvar = self.encoders[lang_index](bow)
        theta = F.softmax(reparameterize(mu, logvar, self.training), dim=1)
        return theta, mu, logvar

    @torch.no_grad()
    def theta(self, bow: Tensor, lang_index: int) -> Tensor:
        mu, _ = self.encoders[lang_index](bow)
        return F.softmax(mu, dim=1)

    def topic_word(self) -> list[Tensor]:
        raise NotImplementedError

    def forward(self, bows: list[Tensor], rows: list[Tensor] | None = None,
                extra: ExtraLosses | None = None) -> dict[str, Tensor]:
        """Loss dict for one step; `rows` are the batch's document indices per language."""
        raise NotImplementedError


def sparse_to_aux(m: sp.spmatrix, prefix: str) -> dict[str, Tensor]:
    """A scipy sparse matrix as dense tensors (indices, values, shape) that safetensors can store."""
    coo = sp.coo_matrix(m)
    return {
        f"{prefix}_indices": torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64)),
        f"{prefix}_values": torch.from_numpy(coo.data.astype(np.float32)),
        f"{prefix}_shape": torch.tensor(coo.shape, dtype=torch.int64),
    }


def aux_to_sparse(model: nn.Module, prefix: str) -> Tensor:
    """Rebuild a torch sparse COO tensor from buffers written by `sparse_to_aux`."""
    idx = getattr(model, f"aux_{prefix}_indices")
    val = getattr(model, f"aux_{prefix}_values")
    shape = tuple(int(s) for s in getattr(model, f"aux_{prefix}_shape").tolist())
    return torch.sparse_coo_tensor(idx, val, shape, check_invariants=False).coalesce()


def unique_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """state_dict without aliases: a module shared by two parents (NMTM's encoder body) appears once.

    safetensors refuses tensors that share memory; the first name of each storage is kept.
    """
    seen: set[tuple[int, int]] = set()
    out: dict[str, Tensor] = {}
    for key, t in model.state_dict().items():
        ident = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else (id(t), 0)
        if ident in seen:
            continue
        seen.add(ident)
        out[key] = t.detach().cpu().contiguous()
    return out


def state_digest(model: nn.Module) -> str:
    """SHA-256 of a model's state (every tensor's name, type, shape and bytes, in name order): what a file
    derived from the model records, so that a reader can tell it was derived from another state of the run."""
    h = hashlib.sha256()
    for name, t in sorted(unique_state_dict(model).items()):
        h.update(f"{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def load_unique_state_dict(model: CrossLingualTopicModel, tensors: dict[str, Tensor]) -> None:
    """Inverse of `unique_state_dict`: names missing from `tensors` must be aliases of loaded ones."""
    expected = set(unique_state_dict(model)) - set(model.optional_state)
    missing = sorted(expected - set(tensors))
    unexpected = sorted(set(tensors) - set(model.state_dict()))
    if missing or unexpected:
        raise XtmError(f"saved weights do not fit this model (missing {missing[:5]}, unexpected {unexpected[:5]})")
    own = model.state_dict()
    wrong = [f"{k} {list(v.shape)} (this model: {list(own[k].shape)})" for k, v in tensors.items()
             if not isinstance(v, Tensor) or v.shape != own[k].shape]
    if wrong:  # load_state_dict's own error is a RuntimeError listing every tensor
        raise XtmError(f"saved weights do not fit this model: {'; '.join(wrong[:3])}")
    model.load_state_dict(tensors, strict=False)
