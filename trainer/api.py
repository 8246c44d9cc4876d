"""Training from Python on in-memory documents: `xtm.train(docs, langs=..., dictionary=...)`.

    import xtm

    run = xtm.train(["The market fell.", "股市大幅下跌。", ...], langs=["en", "zh", ...],
                    dictionary=[("市场", "market"), ...], model="nmtm", num_topics=20, epochs=50)
    run.metrics["TU"], run.topics["en"][0], run.run_dir
    model = run.export("bundles/mine")          # a TopicModel, served without torch

It is `xtm-train` without files: the documents are written once as JSONL (into `data_dir`, by
default a new directory next to the run, kept: the run's config.json points at it, and
xtm-contextual reads the documents again) and go through exactly the loader, tokenizers,
vocabulary rules, training loop and evaluation that `xtm-train --data docs.jsonl` uses, into a run
directory (`out`, default a new temporary directory), then fits the contextual route as xtm-train does
(`contextual=`). A problem with a document is the loader's one-line error naming its line: line N of the
JSONL is docs[N - 1]. report.html is not rendered here (the trainer never imports the renderer):
`xtm-report RUN_DIR` writes it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xtm.atomic import foreign_entries, is_plain_file, write_text
from xtm.config import (
    DataConfig,
    Phase2Config,
    Preprocessing,
    RefinerConfig,
    RunConfig,
    Sampling,
    TrainConfig,
)
from xtm.errors import TRAIN_INSTALL, XtmError
from xtm.json_files import is_missing, json_default
from xtm.languages import normalize_lang
from xtm.run_dir import LOCK_NAME, RunDir, has_checkpoint, has_results_only, hold_run_dir, lock_dir, refuse_foreign_dir
from xtm.setting_values import check_setting
from xtm.trainer.recorded import record_contextual_route

if TYPE_CHECKING:
    from xtm.runtime.model import TopicModel

__all__ = ["TrainedRun", "check_setting", "train"]

logger = logging.getLogger(__name__)

DOCS_FILE = "docs.jsonl"
DICT_FILE = "dict.tsv"
# Written into data_dir before the inputs: a later call replaces docs.jsonl and dict.tsv only where it
# finds this (a user's own docs.jsonl, alone in a directory, was overwritten).
INPUTS_MARKER = ".xtm-inputs"
# Settings train() takes as keywords besides its named parameters: TrainConfig's and the JSONL
# preprocessing rules (DataConfig's own file-oriented fields are set from the arguments).
_TRAIN_SETTINGS = tuple(f.name for f in fields(TrainConfig) if f.name not in ("model", "num_topics", "epochs"))
_DATA_SETTINGS = tuple(f.name for f in fields(Preprocessing) if f.name in {g.name for g in fields(DataConfig)})


@dataclass(frozen=True)
class TrainedRun:
    """A finished (or interrupted) training run: where it is and what it measured.

    run_dir: the run directory (xtm-export, xtm-report, xtm-contextual take it). data_path: the
    JSONL the documents were written to. metrics: metrics.json (TU, CNPMI, TQ, classification, ...).
    topics: each language's topics, their top words (topics_<lang>.txt). contextual: the contextual
    route's metrics (RUN_DIR/contextual/contextual.json), None when the run has none."""

    run_dir: Path
    data_path: Path
    metrics: dict[str, Any]
    topics: dict[str, list[list[str]]] = field(default_factory=dict)
    contextual: dict[str, Any] | None = None

    @property
    def interrupted(self) -> bool:
        """True when training stopped early (Ctrl-C, SIGTERM): the checkpoint continues it
        (`xtm-train --data DATA_PATH --out RUN_DIR --resume`)."""
        return bool(self.metrics.get("interrupted"))

    def export(self, bundle_dir: str | Path, **options: Any) -> TopicModel:
        """`xtm-export RUN_DIR --out BUNDLE_DIR` and the loaded bundle (a torch-free TopicModel).

        options: export_run's (quantize="int8", opset, parity_check, contextual)."""
        # Imported here: exporting is the step after training, reached only when asked for.
        from xtm.exporters.onnx_export import export_run
        from xtm.runtime.model import TopicModel

        export_run(self.run_dir, bundle_dir, progress=False, **options)
        return TopicModel.load(bundle_dir)


def train(docs: Sequence[str] | Sequence[Mapping[str, Any]], langs: Sequence[str | None] | str | None = None, *,
          dictionary: str | Path | Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
          model: str | None = None, num_topics: int | None = None, epochs: int | None = None,
          labels: Sequence[Any] | None = None,
          out: str | Path | None = None, data_dir: str | Path | None = None, ref_corpus: str | Path | None = None,
          phase2: Phase2Config | None = None, contextual: bool | None = None, progress: bool = False,
          resume: bool = False, model_langs: Sequence[str] | None = None, **settings: Any) -> TrainedRun:
    """Train a cross-lingual topic model on documents held in memory; returns the run.

    docs: texts, or records as a JSONL line holds them ({"text", "lang"?, "label"?, "split"?,
        "id"?}). langs: with texts, one language code per text, one for all, or None to detect
        them (py3langid). labels: with texts, one label per text (enables the classification metrics).
    dictionary: a TSV file (source<TAB>target), a mapping or pairs (source, target); nmtm and
        infoctm need one, xtra does not.
    model, num_topics, epochs: as xtm-train's --model, --topics, --epochs (default: 'infoctm', 50, 100; with
        resume=True, the run's own).
    out: the run directory (new, empty, or an xtm run; default: a new temporary directory).
    data_dir: where the documents (and a dictionary given as pairs) are written (default: a new
        directory beside the run, "<run>.data"; kept, see the module docstring); not out, nor one holding it.
    ref_corpus: aligned documents for CNPMI (xtm-train --ref-corpus).
    phase2: LLM-XTM phase 2 settings (xtm.config.Phase2Config), or `phase2_epochs=N` for the defaults.
    contextual: the contextual route that serves every language (xtm-train's default): None fits it when
        the run allows and otherwise warns and finishes without it; True requires it (--contextual);
        False skips it (--no-contextual: bundles then read only the training languages).
    progress: progress bars on stderr.
    model_langs: the languages to model, in order (xtm-train --langs), e.g. ["en", "ja"]: documents in other
        languages are left out. Needed when docs hold more languages than the model takes (two for every
        backbone); default: every language of docs.
    resume: continue the run in `out` (xtm-train --resume): the same documents (and a dictionary given as pairs,
        the same pairs), more epochs or phase 2; every setting not given is the run's own, as config.json records
        it (logged), and the checkpoint refuses what contradicts it. Without it, an `out` that holds a run is
        refused before anything is written.
    settings: any other xtm-train setting by its name in xtm.config: TrainConfig's (batch_size, lr,
        seed, device, threads, checkpoint_every, hparams={...}, eval_every, phase2_epochs, ...) and
        the vocabulary rules (vocab_size, min_df, max_df; extra_stopwords=[words], xtm-train's --stopwords;
        user_words=[words], its --user-words).
        Checked like the command line's options.
    """
    _check_switches(contextual, resume)
    named = {k: v for k, v in (("model", model), ("num_topics", num_topics), ("epochs", epochs)) if v is not None}
    cfg, data_settings = _configs(named, progress, settings)
    if model_langs is not None:
        data_settings["langs"] = _model_langs(model_langs)
    records = _records(docs, langs, labels)
    run_dir = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="xtm-run-"))
    _check_out(run_dir, resume)
    inputs = _Inputs.of(records, dictionary)  # checked before anything is written
    resuming = resume and has_checkpoint(run_dir)
    # absolute(): out="." has no name to put ".data" after
    data = Path(data_dir) if data_dir is not None else run_dir.absolute().with_name(run_dir.absolute().name + ".data")
    run_training = _run_training()
    if model_langs is None and not resuming:
        _check_language_count(records, cfg.model)  # before the documents are written and tokenized

    # The run is held from before its inputs are written: a second call on the same out while one trains is
    # refused ("in use") before it replaces the documents and dictionary the first is training on.
    # Its data directory too: two calls with other outs and one data_dir replaced each other's documents (the
    # contextual fit reads them again when training ends).
    check_data_dir(data, run_dir)
    with hold_run_dir(run_dir, "xtm.train"), lock_dir(data, "xtm.train"), _callers_random_state():
        if resuming:
            cfg, data_settings, phase2, contextual = _recorded(run_dir, named, settings, cfg, data_settings, phase2,
                                                               contextual)
        data_path, dict_path = inputs.write(data, resume=resuming)
        if resuming and dictionary is None:
            dict_path = _recorded_dictionary(run_dir)  # as xtm-train --resume takes the recorded --dict
        phase2 = _phase2(phase2, cfg)
        data_cfg = DataConfig(path=str(data_path), dict_path=str(dict_path) if dict_path is not None else None,
                              ref_corpus=str(ref_corpus) if ref_corpus is not None else None, **data_settings)
        try:
            metrics = run_training(data_cfg, cfg, run_dir, resume=resume, phase2=phase2,
                                   command={"contextual": contextual, "no_contextual": contextual is False})
        except XtmError as e:
            from xtm.trainer.phase2.objective import NoRefinementAnswerError  # (torch: loaded by training)

            if isinstance(e, NoRefinementAnswerError):  # recorded its settings: its resume must not fit a route
                record_contextual_route(run_dir, contextual, contextual is False)  # it was told not to
            if dict_path is not None and not isinstance(dictionary, (str, Path)) and e.path == str(dict_path):
                # The file is the one xtm wrote from the caller's pairs: say so, not only its name.
                raise XtmError(f"the dictionary given as pairs (written to {dict_path}): {e.reason}", line=e.line,
                               field=e.field) from None
            raise
        record_contextual_route(run_dir, contextual, contextual is False)
        run = RunDir(run_dir)
        topics = {lang: run.read_topics(lang) for lang in metrics.get("langs", []) if run.topics_path(lang).is_file()}
        route = None
        if contextual is not False and not metrics.get("interrupted"):  # an interrupted run is continued first
            from xtm.trainer.contextual.fit import fit_after_training

            route = fit_after_training(run_dir, cfg, required=bool(contextual))
    return TrainedRun(run_dir=run_dir, data_path=data_path, metrics=metrics, topics=topics, contextual=route)


def _check_switches(contextual: Any, resume: Any) -> None:
    if contextual not in (None, True, False):
        raise XtmError(f"contextual must be True, False or None (the default: fitted when the run allows), "
                       f"got {contextual!r}")
    if resume not in (True, False):
        raise XtmError(f"resume must be True or False, got {resume!r}")


def _check_out(run_dir: Path, resume: bool) -> None:
    """`out` is one to train into (before anything is written): new, empty, or a run to resume."""
    refuse_foreign_dir(run_dir, hint="choose a new or empty out")
    if not resume and has_checkpoint(run_dir):
        # (said here: the documents below would otherwise replace the ones that run was trained on)
        raise XtmError("out already holds a run: pass resume=True to continue it, or choose another out",
                       path=run_dir)
    if has_results_only(run_dir):
        raise XtmError("out holds a finished run's results and no checkpoint to continue it from (checkpoints/ was "
                       "removed): choose another out", path=run_dir)


def _recorded(run_dir: Path, named: dict[str, Any], settings: dict[str, Any], cfg: TrainConfig,
              data_settings: dict[str, Any], phase2: Phase2Config | None,
              contextual: bool | None) -> tuple[TrainConfig, dict[str, Any], Phase2Config | None, bool | None]:
    """A resume's settings: those the caller gives, and the run's own (config.json) for the rest, as xtm-train
    --resume takes them (xtm.trainer.recorded); the ones taken are logged. A run interrupted before it wrote
    config.json has nothing recorded: the caller's settings stand."""
    from xtm.trainer.recorded import RecordedSettings, recorded_phase2

    run = RunDir(run_dir)
    if not run.file(RunDir.CONFIG).is_file():
        return cfg, data_settings, phase2, contextual
    given_train = set(named) | {k for k in settings if k in _TRAIN_SETTINGS} | {"progress"}
    given_data = {"path", "dict_path", "ref_corpus", "token_rules"} | set(data_settings)  # (model_langs: "langs")
    given = {TrainConfig: given_train, DataConfig: given_data, Phase2Config: set(), RefinerConfig: set(),
             Sampling: set(), RunConfig: {"contextual", "no_contextual"} if contextual is not None else set()}
    recorded = RecordedSettings(run.load_config(), given, run.file(RunDir.CONFIG),
                                {k: getattr(cfg, k) for k in given_train})
    cfg = recorded.fill_train(cfg, recorded.config.get("train_config"))
    filled = recorded.fill(DataConfig(path="", **data_settings), DataConfig, "data", recorded.config.get("data"))
    data_settings = {name: getattr(filled, name) for name in (*_DATA_SETTINGS, "langs")}
    if phase2 is None and cfg.phase2_epochs:
        phase2 = recorded_phase2(recorded, Phase2Config(epochs=cfg.phase2_epochs))
    route = recorded.contextual_route()
    if contextual is None and route.get("no_contextual"):
        contextual = False
    elif contextual is None and route.get("contextual"):
        contextual = True  # (a resume recorded it as None, and the next one fitted it as optional)
    if recorded.taken:
        logger.info(f"resume=True: the run's own settings where the call gives none (as xtm-train's options): "
                    f"{', '.join(recorded.taken)}")
    return cfg, data_settings, phase2, contextual


def _recorded_dictionary(run_dir: Path) -> Path | None:
    """The dictionary file the run's config.json records (None: it had none, or records nothing)."""
    run = RunDir(run_dir)
    if not run.file(RunDir.CONFIG).is_file():
        return None
    recorded = (run.load_config().get("data") or {}).get("dict_path")
    if not isinstance(recorded, str):
        return None
    if not os.path.lexists(recorded):  # (anything else there: the dictionary reader says what is wrong with it)
        raise XtmError("resume=True without dictionary=: the run was trained with this dictionary, which is gone; "
                       "pass the same one as dictionary=", path=recorded)
    logger.info(f"resume=True: the run's own dictionary {recorded}")
    return Path(recorded)


@contextmanager
def _callers_random_state() -> Iterator[None]:
    """Training seeds Python's and torch's global random generators (dropout and sampling draw from them, so a
    seed repeats a run); the calling program gets its own states back afterwards, as if train() drew nothing.
    CUDA's are seeded only by a CUDA run, and given back when the caller had used CUDA before (a CUDA run started
    in a program that had not leaves them at the run's state). Two trainings in threads of one process still
    share those generators while they run."""
    import random

    import torch

    python_state, torch_state = random.getstate(), torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() \
        else None
    try:
        yield
    finally:
        random.setstate(python_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def _run_training() -> Any:
    """xtm.trainer.run.run_training, imported when training starts (so `import xtm` and this module stay
    torch-free); a runtime-only install gets the install line, as xtm-train gives it."""
    try:
        from xtm.trainer.run import run_training
    except ImportError as e:
        missing = e.name or str(e)
        raise XtmError(f"training needs torch and the training extra ({missing} is missing): {TRAIN_INSTALL}") from e
    return run_training


def _configs(named: dict[str, Any], progress: bool, settings: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any]]:
    unknown = sorted(set(settings) - set(_TRAIN_SETTINGS) - set(_DATA_SETTINGS))
    if unknown:
        raise XtmError(f"unknown setting(s) {', '.join(unknown)}: train() takes {', '.join(_TRAIN_SETTINGS)}, "
                       f"{', '.join(_DATA_SETTINGS)}")
    train_kw = {k: check_setting(TrainConfig, k, v) for k, v in settings.items() if k in _TRAIN_SETTINGS}
    data_kw = {k: check_setting(DataConfig, k, v) for k, v in settings.items() if k in _DATA_SETTINGS}
    cfg = TrainConfig(**{k: check_setting(TrainConfig, k, v) for k, v in named.items()},
                      **{"progress": bool(progress), **train_kw})
    return cfg, data_kw


def _phase2(phase2: Phase2Config | None, cfg: TrainConfig) -> Phase2Config | None:
    """xtm-train's rule: phase 2 runs when phase2_epochs > 0 (or a Phase2Config is given), its LLM
    sampling seeded with the run's seed."""
    if phase2 is None and not cfg.phase2_epochs:
        return None
    p = phase2 or Phase2Config()
    epochs = cfg.phase2_epochs or p.epochs
    refiner = replace(p.refiner, sampling=replace(p.refiner.sampling, seed=cfg.seed))
    return replace(p, epochs=epochs, refiner=refiner)


def _records(docs: Any, langs: Any, labels: Any) -> list[dict[str, Any]]:
    """docs as JSONL records, checked with messages naming docs[i] (the loader checks the rest)."""
    listed = _as_list(docs)
    if listed is None:
        raise XtmError(f"docs must be a list of texts or records, got {type(docs).__name__}")
    docs, n = listed, len(listed)
    per_doc = _per_doc("langs", langs, n)
    per_label = _per_doc("labels", labels, n) if labels is not None else None
    out = []
    for i, d in enumerate(docs):
        if isinstance(d, str):
            rec: dict[str, Any] = {"id": str(i), "text": d}
            if per_doc[i] is not None:
                rec["lang"] = _lang(per_doc[i], i)
            if per_label is not None:
                rec["label"] = per_label[i]
        elif isinstance(d, Mapping):
            if langs is not None or labels is not None:
                raise XtmError("docs are records: give their languages and labels in the records "
                               "(\"lang\", \"label\"), not as langs= / labels=")
            rec = {"id": str(i), **d}
        else:
            raise XtmError(f"docs[{i}] must be a text or a record (a mapping), got {type(d).__name__}")
        if not isinstance(rec.get("text"), str):
            # (an empty text is a document without words, dropped by the loader with the short ones, as from a
            # JSONL file: one blank cell of a DataFrame stopped the whole training)
            raise XtmError(f"docs[{i}]: 'text' must be a string, got {rec.get('text')!r:.60}")
        try:
            rec["text"].encode("utf-8")
        except UnicodeEncodeError as e:  # (it failed writing the JSONL, after the data directory was made)
            raise XtmError(f"docs[{i}]: 'text' is not Unicode text: a lone surrogate at character {e.start} "
                           "(a '\\ud800' escape or bytes decoded with 'surrogateescape')") from None
        out.append(rec)
    if not out:
        raise XtmError("docs is empty: nothing to train on")
    return out


def _model_langs(value: Any) -> tuple[str, ...]:
    """model_langs= as ISO codes (aliases such as 'cn' mapped), checked: a list of distinct language codes."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise XtmError(f"model_langs must be a list of language codes (e.g. ['en', 'ja']), got {value!r:.60}")
    codes = []
    for code in value:
        if not isinstance(code, str):
            raise XtmError(f"model_langs must hold language codes, got {type(code).__name__}")
        try:
            codes.append(normalize_lang(code))
        except XtmError as e:
            raise XtmError(f"model_langs: {e.reason}") from None
    if not codes or len(set(codes)) < len(codes):
        raise XtmError(f"model_langs must name each language once, got {list(value)!r:.80}")
    return tuple(codes)


def _check_language_count(records: list[dict[str, Any]], model: str) -> None:
    """More languages given than the model takes is said before the documents are written and tokenized (minutes
    on a large corpus), with the keyword that chooses them; detected languages are counted by the loader."""
    from xtm.models_zoo.registry import model_class

    given = {r.get("lang") for r in records}
    if None in given or not all(isinstance(code, str) for code in given):
        return
    try:
        codes = sorted({normalize_lang(code) for code in given})
    except XtmError:
        return  # (the loader names the document)
    wanted = model_class(model).num_languages
    if len(codes) > wanted:
        raise XtmError(f"{model} models {wanted} languages; docs have {len(codes)} ({', '.join(codes)}): choose "
                       f"{wanted} with model_langs=[...] (xtm-train --langs)")


def _lang(code: Any, i: int) -> str:
    if not isinstance(code, str):
        raise XtmError(f"langs[{i}] must be a language code or None, got {type(code).__name__}")
    try:
        return normalize_lang(code)
    except XtmError as e:
        raise XtmError(f"langs[{i}]: {e.reason}") from None


def _per_doc(name: str, value: Any, n: int) -> list[Any]:
    """One value per document from a scalar or a sequence of n values (a list, or a 1-D array or Series)."""
    if value is None or isinstance(value, str):
        return [value] * n
    values = _as_list(value)
    if values is None or len(values) != n:
        got = f"{len(values)} values" if values is not None else type(value).__name__
        raise XtmError(f"{name} must give one value per document ({n}), got {got}")
    return [None if is_missing(v) else v for v in values]  # a pandas column's NaN / pd.NA: no value


def _as_list(value: Any) -> list[Any] | None:
    """`value` as a list by position when it is a sequence (not a text) or a one-dimensional array or pandas
    Series (whose labels after a filter are not 0..n-1); None for anything else."""
    if isinstance(value, (str, bytes)):
        return None
    if isinstance(value, Sequence) or getattr(value, "ndim", None) == 1:
        return list(value)
    return None


def check_data_dir(data: Path, run_dir: Path) -> None:
    """XtmError unless `data` is new, empty or an earlier xtm.train call's (its INPUTS_MARKER, the files it writes
    and its lock only): a user's directory is never written into. Nor the run directory or one holding it: the
    run's files there would make it a user's directory to the resume (refused with a message about other files)."""
    here, run = data.resolve(), run_dir.resolve()
    if here == run or here in run.parents:
        what = "the run directory (out)" if here == run else f"a directory holding the run directory {run_dir}"
        raise XtmError(f"data_dir is {what}: the documents are kept apart from the run, so a resume finds both as "
                       "they were written; pass another data_dir (the default is a new directory beside the run, "
                       "'<out>.data')", path=data)
    if data.is_symlink() or (data.exists() and not data.is_dir()) or _holds_others(data):
        raise XtmError(f"data_dir must be new, empty or one an earlier xtm.train call wrote (the documents are "
                       f"written there); it holds other files and no {INPUTS_MARKER} marker (written since "
                       "2026-12-06: delete a directory an older xtm.train wrote, or pass another data_dir)",
                       path=data)


def _holds_others(data: Path) -> bool:
    """Whether the directory `data` holds anything but what xtm.train writes there: its files where its marker
    is, else only its lock (a call stopped before writing the marker). A desktop's own files do not count."""
    if not data.is_dir():
        return False
    ours = {DOCS_FILE, DICT_FILE, INPUTS_MARKER, LOCK_NAME} if is_plain_file(data / INPUTS_MARKER) else {LOCK_NAME}
    return bool(foreign_entries(data, ours.__contains__, limit=1))


@dataclass(frozen=True)
class _Inputs:
    """The documents as docs.jsonl's text, and the dictionary: a path (the caller's file) or, given as pairs, dict.tsv's
    text. Built and checked before anything is written (`of`); `write` puts them in the data directory."""

    docs: str
    dictionary: Path | str | None

    @classmethod
    def of(cls, records: list[dict[str, Any]], dictionary: Any) -> _Inputs:
        try:
            lines = [json.dumps(r, ensure_ascii=False, allow_nan=False, default=json_default) for r in records]
        except (TypeError, ValueError) as e:
            raise XtmError(f"a document record cannot be written as JSON: {e}") from e
        docs = "".join(line + "\n" for line in lines)
        if dictionary is None or isinstance(dictionary, (str, Path)):
            return cls(docs, Path(dictionary) if dictionary is not None else None)
        pairs = dictionary.items() if isinstance(dictionary, Mapping) else dictionary
        if isinstance(pairs, (set, frozenset)):  # in order: a set's follows the hash seed, and a resume compares
            pairs = sorted(pairs, key=repr)
        rows = []
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(w, str) for w in pair)):
                raise XtmError(f"dictionary entry {i} must be a pair of words (source, target), got {pair!r:.60}")
            if any(c in w for w in pair for c in "\t\n\r") or not all(w.strip() for w in pair):
                raise XtmError(f"dictionary entry {i} {pair!r:.60}: words must be non-empty, without tabs or "
                               "newlines")
            rows.append(f"{pair[0]}\t{pair[1]}\n")
        return cls(docs, "".join(rows))

    def write(self, data: Path, resume: bool = False) -> tuple[Path, Path | None]:
        """docs.jsonl (and dict.tsv for a dictionary given as pairs) in `data`: a new or empty directory, or an
        earlier call's (its INPUTS_MARKER and these files only: replaced, so a corrected call can run again), as
        `check_data_dir` found it before train() took its lock. `resume`: the run trained on the files there; other
        documents or pairs are refused, and nothing is written (a refused resume once left the run's dictionary
        replaced by the call's)."""
        docs_path, dict_path = data / DOCS_FILE, data / DICT_FILE
        if resume:
            if docs_path.is_file() and docs_path.read_text(encoding="utf-8") != self.docs:
                raise XtmError("resume=True with other documents than the run was trained on: pass the same "
                               "documents (the run's are in this file), or train a new run", path=docs_path)
            if isinstance(self.dictionary, str) and dict_path.is_file() and \
                    dict_path.read_text(encoding="utf-8") != self.dictionary:
                raise XtmError("resume=True with other dictionary pairs than the run was trained with: pass the same "
                               "pairs (the run's are in this file), or train a new run", path=dict_path)
        data.mkdir(parents=True, exist_ok=True)
        write_text(data / INPUTS_MARKER, "written by xtm.train: docs.jsonl and dict.tsv are replaced by its next "
                                         "call\n")
        write_text(docs_path, self.docs)
        if not isinstance(self.dictionary, str):
            return docs_path, self.dictionary
        write_text(dict_path, self.dictionary)
        return docs_path, dict_path
