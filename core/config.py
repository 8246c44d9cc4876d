"""The configuration tree: every setting of a run, with its default and its help text, written once.

    RunConfig                 one xtm-train run: where it goes, resume, contextual route, and
      data:   DataConfig      the corpus and how JSONL becomes bags of words (Preprocessing)
      train:  TrainConfig     the backbone and phase-1 training
      phase2: Phase2Config    LLM-XTM phase 2 (None: phase 1 only)
        refiner: RefinerConfig    who refines topics
          sampling: Sampling      how LLM refiners sample (part of the answer cache key)
    ContextualConfig          xtm-contextual: the contextual inference network of a finished run

Each field is declared with `setting(default, help=..., cli=Cli(...))`: the CLIs (xtm.cli.options)
build their options from these declarations, so a default, a help text or a valid range is never
written a second time, and library functions take these objects (or their default objects) instead
of restating numbers in their signatures. Configs are frozen: a value derived later is a new
object (`dataclasses.replace`), never a mutation that a caller holding the old one would not see.

The dictionaries the trainer writes (config.json "train_config", "data", "phase2"; contextual.json
"config"; the checkpoints' "train_config") are the `to_dict()` of these classes; their keys are a
file format that older runs were written with, so fields are only ever added at the end.

Importing this module is cheap (no torch, numpy or click): `xtm-train --help` reads it.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, is_dataclass
from typing import Any, TypeVar
from urllib.parse import unquote_plus, urlsplit

from xtm.cpu import MAX_THREADS
from xtm.errors import XtmError
from xtm.labels import MAX_LABEL_CHARS
from xtm.text_files import word_list_option

__all__ = ["CONTEXTUAL_AUTO_ROUTES", "CONTEXTUAL_OBJECTIVES", "DEFAULT_ENCODER", "DEFAULT_MAX_TOKENS", "MODEL_NAMES",
           "PREPROCESSING", "REFINER_NAMES", "TOKEN_RULES", "TOKEN_RULES_BEFORE_RECORDED", "WORD_LIST_SETTINGS",
           "Cli", "ContextualConfig", "DataConfig", "LabelConfig", "Phase2Config", "Preprocessing", "RefinerConfig",
           "RunConfig", "Sampling", "TrainConfig", "check_device_name", "cli_spec", "cli_value", "default_of",
           "flat_settings", "from_dict", "known_token_rules", "option_text", "parse_csv", "parse_key_values",
           "setting"]

# The multilingual sentence encoder used unless a run names another (offline, no download), and the
# tokens the contextual route reads per document. xtm.models_zoo.encoders takes both from here.
DEFAULT_ENCODER = "use-multilingual"
DEFAULT_MAX_TOKENS = 256
# The backbones (--model choices); xtm.models_zoo.registry maps each to its class. Declared here, not
# there, so that the model zoo may read its defaults from this module without an import cycle.
MODEL_NAMES = ("nmtm", "infoctm", "xtra", "gloctm")
# Training settings the papers use for every backbone, and what each recipe changes per backbone. "fast" (the
# default) differs only where learning curves showed the papers' quality reached within the default 100 epochs
# that the papers' settings reach in 500 (issue 15, docs/benchmarks.md "Time to quality"): NMTM at batch 50
# with a 5x topic-word rate; InfoCTM with batch-norm eps 1e-10 (a backbone hyper-parameter, under "hparams"),
# so that no language's encoder stays near posterior collapse (docs/benchmarks.md "Near-collapse"). "paper"
# reproduces the papers as TopMost's trainer runs them (the earlier "papers' recipe" rows of docs/benchmarks.md).
# "authors" is the LLM-XTM authors' public code, where the published rows come from (its configs/model/*.yaml and
# runners/Runner.py: batch 128, StepLR, every gradient clipped at 1.0; NMTM and InfoCTM with 100 hidden units,
# NMTM at Adam 1e-3; GloCTM from its authors' code: batch 128, StepLR); docs/benchmarks.md "The LLM-XTM authors'
# InfoCTM setting" measures it. Epochs and dataset weights (InfoCTM's weight_mi: 30 ECNews, 50 Rakuten) stay options.
# The largest --seed: numpy and torch seed from 32-bit words (a negative or 20-digit seed was a traceback).
SEED_MAX = 2**32 - 1
PAPER_TRAINING: dict[str, Any] = {"batch_size": 200, "lr": 0.002, "topic_lr_scale": 1.0, "lr_schedule": "constant"}
LR_SCHEDULES = ("constant", "cosine", "step")
# --lr-schedule step is the authors' own code's torch StepLR: the rate halves every this many epochs (InfoCTM,
# NMTM in LLM-XTM, GloCTM: 125; XTRA: 250). TopMost's trainer has it off by default, as xtm's recipes do.
LR_STEP_EPOCHS: dict[str, int] = {"xtra": 250}
LR_STEP_EPOCHS_DEFAULT = 125
LR_STEP_GAMMA = 0.5


def lr_step_epochs(model: str) -> int:
    """Epochs between two halvings of --lr-schedule step for a backbone (the authors' StepLR step size)."""
    return LR_STEP_EPOCHS.get(model.lower(), LR_STEP_EPOCHS_DEFAULT)


RECIPES: dict[str, dict[str, dict[str, Any]]] = {"fast": {"nmtm": {"batch_size": 50, "topic_lr_scale": 5.0},
                                                          "infoctm": {"hparams": {"bn_eps": 1e-10}}},
                                                 "paper": {},
                                                 "authors": {
                                                     "nmtm": {"batch_size": 128, "lr": 0.001, "lr_schedule": "step",
                                                              "hparams": {"hidden": 100, "grad_clip": 1.0}},
                                                     "infoctm": {"batch_size": 128, "lr_schedule": "step",
                                                                 "hparams": {"hidden": 100, "grad_clip": 1.0}},
                                                     "xtra": {"batch_size": 128, "lr_schedule": "step"},
                                                     "gloctm": {"batch_size": 128, "lr_schedule": "step"}}}
REFINER_NAMES = ("embedding", "openai", "vllm", "transformers")
CONTEXTUAL_OBJECTIVES = ("distill", "ctm")
# What `--route auto` serves a training language with when the bundle has a contextual route (issue 14):
# "contextual" (the same network as every other language) or "bow" (its bag of words).
CONTEXTUAL_AUTO_ROUTES = ("contextual", "bow")

C = TypeVar("C")


# --------------------------------------------------------------------------- declaring settings


@dataclass(frozen=True)
class Cli:
    """How a setting appears on the command line: plain data, made into a click option by xtm.cli.options.

    flags: the option's names, space-separated ("--topics", "-q --quiet").
    help: the option's own help where it must differ from the setting's (a switch that turns a
        setting off, a repeatable KEY=VALUE form); None: the setting's help.
    type: the value type where the default does not tell (a default of None).
    min, max, min_open, max_open: the valid range of a number; choices, case_sensitive: of a word.
    path: "any", "file" or "dir" for a path; exists: it must exist.
    switch: for a flag without value, the value its presence gives the setting (absent: the default).
    off: for a yes/no setting, the flag that makes it False where `flags` makes it True ("--full-theta",
        off="--sparse-theta": click's "--full-theta/--sparse-theta", the default shown).
    tty: absent, the setting is on only when stderr is a terminal (progress bars).
    parse: turns the option's raw value into the setting's (a comma list, KEY=VALUE pairs).
    """

    flags: str
    help: str | None = None
    type: type | None = None
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False
    choices: tuple[str, ...] | None = None
    case_sensitive: bool = True
    path: str | None = None
    exists: bool = False
    switch: bool | None = None
    off: str | None = None
    tty: bool = False
    required: bool = False
    multiple: bool = False
    metavar: str | None = None
    parse: Callable[[Any], Any] | None = None

    @property
    def name(self) -> str:
        """The option's parameter name: its last flag without dashes ("--llm-timeout" -> llm_timeout)."""
        return self.flags.split()[-1].lstrip("-").replace("-", "_")


def setting(default: Any = MISSING, *, help: str, cli: Cli | None = None,
            factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field with its help text and, when it has one, its command-line option."""
    return field(default=default, default_factory=factory if factory is not None else MISSING,
                 metadata={"help": help, "cli": cli})


def _same_as(cls: type, name: str) -> Any:
    """Another config's field, declared once: the same default, help and option."""
    f = _field(cls, name)
    return field(default=f.default, default_factory=f.default_factory, metadata=f.metadata)


def _field(cls: type, name: str) -> Field:
    return cls.__dataclass_fields__[name]  # type: ignore[attr-defined]


def default_of(cls: type, name: str) -> Any:
    """The declared default of `cls.name` (a fresh value for fields with a factory)."""
    f = _field(cls, name)
    if f.default_factory is not MISSING:
        return f.default_factory()
    if f.default is MISSING:
        raise KeyError(f"{cls.__name__}.{name} has no default")
    return f.default


def cli_spec(cls: type, name: str) -> Cli | None:
    return _field(cls, name).metadata.get("cli")


def flat_settings(cfg: Any, prefix: str = "") -> dict[str, tuple[Any, Cli | None]]:
    """A config's leaf settings by dotted name ("refiner.sampling.top_p"), each with its option (None: none)."""
    out: dict[str, tuple[Any, Cli | None]] = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            out.update(flat_settings(value, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = (value, f.metadata.get("cli"))
    return out


def option_text(cli: Cli | None, name: str, value: Any) -> str:
    """The command-line words that give a setting `value`: "--lambda-mmd 20000", "--mmd-top-only",
    "drop --mmd-top-only"; a setting without an option is named as it is ("refiner.sampling.seed=1")."""
    if cli is None:
        return f"{name}={json.dumps(value)}"
    flag = cli.flags.split()[-1]
    if cli.off is not None:
        return flag if value else cli.off
    if cli.switch is not None:
        return flag if value == cli.switch else f"drop {flag}"
    if value is None:
        return f"drop {flag}"
    return f"{flag} {cli_value(value)}"


def cli_value(value: Any) -> str:
    """A value as a shell command line takes it back exactly: a whole number without ".0" (an int option refuses
    "2.0"), any other float by repr (`:g` gave --seed 2.02401e+07 and a rounded --lr), text quoted where the
    shell would split or expand it (a model path with a space), anything else by str()."""
    if isinstance(value, str):
        return shlex.quote(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def from_dict(cls: type[C], d: dict[str, Any]) -> C:
    """A config from its `to_dict()` (a run's config.json): nested configs rebuilt, unknown keys
    (written by a newer xtm, or "name" next to "data") ignored, missing ones at their defaults. A class
    with a `migrate(d)` classmethod (what an older xtm wrote, as this one reads it) has it applied first,
    so every reader of a record gets the migrations."""
    migrate = getattr(cls, "migrate", None)
    if migrate is not None:
        d = migrate(d)
    kwargs = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name not in d:
            continue
        value = d[f.name]
        nested = f.default_factory if f.default_factory is not MISSING else None
        if isinstance(value, dict) and is_dataclass(nested):
            value = from_dict(nested, value)  # type: ignore[arg-type]
        kwargs[f.name] = value
    return cls(**kwargs)


# --------------------------------------------------------------------------- option value parsers


def parse_csv(text: str | None) -> tuple[str, ...] | None:
    """"en, zh" -> ("en", "zh"); empty or absent -> None (every language found)."""
    return tuple(x.strip() for x in text.split(",")) if text else None


def parse_key_values(items: Sequence[str]) -> dict[str, Any]:
    """`key=value` pairs with values parsed as JSON where possible (numbers, true/false), else strings."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise XtmError(f"--set expects KEY=VALUE, got '{item}'")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


# --------------------------------------------------------------------------- data


# How JSONL text becomes a training vocabulary's tokens, by version; a run records the version it was built with
# (run.json "token_rules", xtm.run_dir.run_token_rules), so a resume or a contextual fit rebuilds the same
# vocabulary after an upgrade.
#   1: runs made before 2026-12-07: tokenizer kind "regex" for languages other than zh/ja, xtm's six stopword lists.
#   2: kind "words" (a word keeps its combining marks), stopwords-iso's lists for 51 more languages.
#   3: kind "kiwi" for Korean (content words without particles and endings; xtm.runtime.korean) and xtm's Korean
#      stopword list; a language detected between candidates weighs Han, kana and Hangul as three letters.
TOKEN_RULES = 3
TOKEN_RULES_BEFORE_RECORDED = 1  # what a run that records no version was built with


def known_token_rules(value: object) -> bool:
    """Whether `value` is token rules this xtm knows: a whole number (not a bool) from 1 to TOKEN_RULES."""
    return type(value) is int and 1 <= value <= TOKEN_RULES


# The settings that are lists of words (a file of them on the command line, a list in config.json and xtm.train).
WORD_LIST_SETTINGS = ("extra_stopwords", "user_words")


@dataclass(frozen=True)
class Preprocessing:
    """How JSONL documents become bags of words (in memory and out of core alike): which words make
    each language's vocabulary and which documents are kept."""

    vocab_size: int = setting(5000, help="Words per language (JSONL input).",
                              cli=Cli("--vocab-size", min=10, max=10_000_000))
    min_df: int = setting(2, help="Minimum document frequency of a word (JSONL input).", cli=Cli("--min-df", min=1))
    max_df: float = setting(0.5, help="Maximum share of documents containing a word (JSONL input).",
                            cli=Cli("--max-df", min=0, max=1, min_open=True))
    min_doc_tokens: int = setting(1, help="Documents with fewer vocabulary tokens than this are dropped.")
    token_rules: int = setting(TOKEN_RULES, help="How text becomes tokens (xtm.config.TOKEN_RULES): recorded by "
                                                 "each run, so a resume or a contextual fit after an upgrade "
                                                 "rebuilds its vocabulary; not an option.")
    extra_stopwords: tuple[str, ...] = setting(
        (), help="A file of words to drop from every language's vocabulary besides its stopword list, one word a "
                 "line (# comments): domain words such as 'product' or 'customer'. Each is matched as the "
                 "language's tokenizer writes words (a word it cuts in several pieces, or rewrites, is not used: "
                 "write Korean words in their dictionary form, 배송 not 배송은; a warning names them). The words are "
                 "recorded in config.json, and --resume takes them.",
        cli=Cli("--stopwords", path="file", exists=True, metavar="FILE", parse=word_list_option))
    user_words: tuple[str, ...] = setting(
        (), help="A file of words the segmenter must keep whole, one word a line (# comments): domain terms and "
                 "product names it would cut (Korean 선크림 'sunscreen' read as 선 + 크림). Korean's analyser (Kiwi) "
                 "takes them, as nouns; other languages' tokenizers take none today (a warning says so). The words "
                 "are recorded in config.json and in the bundle (inference cuts the same way), and --resume takes "
                 "them.",
        cli=Cli("--user-words", path="file", exists=True, metavar="FILE", parse=word_list_option))

    def __post_init__(self) -> None:
        # config.json gives a list (null, as a hand edit writes "none": no words); anything else but a tuple is
        # refused by name where settings are checked
        for name in WORD_LIST_SETTINGS:
            value = getattr(self, name)
            if value is None or isinstance(value, list):
                object.__setattr__(self, name, tuple(value or ()))


PREPROCESSING = Preprocessing()  # the default rules, for functions that take a Preprocessing


@dataclass(frozen=True)
class DataConfig:
    """Where the corpus comes from and how it is read (config.json "data")."""

    # Required (xtm-train checks it: with --resume the run's recorded one is taken).
    path: str = setting(help="Benchmark directory (train_bow_matrix_<L>.npz, vocab_<L>, ...) or JSONL file/directory "
                             "(required; with --resume, the run's own unless given).",
                        cli=Cli("--data", path="any", exists=True))
    dict_path: str | None = setting(None, help="Bilingual dictionary, TSV source<TAB>target (orientation and "
                                                "Porter-stemmed English are detected).",
                                    cli=Cli("--dict", path="file", exists=True))
    langs: Sequence[str] | None = setting(None, help="Comma-separated languages to model, in order (e.g. en,zh).",
                                          cli=Cli("--langs", type=str, parse=parse_csv))
    vocab_size: int = _same_as(Preprocessing, "vocab_size")
    min_df: int = _same_as(Preprocessing, "min_df")
    max_df: float = _same_as(Preprocessing, "max_df")
    ref_corpus: str | None = setting(None, help="Aligned reference corpus for CNPMI (dir with *.<lang>.tok.txt[.gz], "
                                                "line i aligned).", cli=Cli("--ref-corpus", path="any", exists=True))
    # Out of core (xtm.trainer.data.sharding): JSONL preprocessed into shards under `shard_dir`, training
    # streams them; evaluation keeps the test split and a sample of the training documents in memory.
    out_of_core: bool = setting(False, help="Preprocess JSONL into sparse shards on disk and stream them while "
                                            "training, so memory does not grow with the corpus (nmtm and infoctm; "
                                            "see below).", cli=Cli("--out-of-core", switch=True))
    shard_size: int = setting(10_000, help="Out of core: documents per shard file.", cli=Cli("--shard-size", min=1))
    shard_dir: str | None = setting(None, help="Out of core: where the shards go (default: RUN_DIR/shards); reused "
                                               "when the input files and preprocessing settings are unchanged.",
                                    cli=Cli("--shard-dir", path="dir"))
    eval_train_docs: int = setting(20_000, help="Out of core: training documents per language (evenly spaced) kept in "
                                                "memory for evaluation (classification's training set, the report).",
                                   cli=Cli("--eval-train-docs", min=1))
    # At the end: config.json files written before it lack it (the rules a run used are read from run.json).
    token_rules: int = _same_as(Preprocessing, "token_rules")
    # At the end: config.json files written before them lack them (their runs had none).
    extra_stopwords: tuple[str, ...] = _same_as(Preprocessing, "extra_stopwords")
    user_words: tuple[str, ...] = _same_as(Preprocessing, "user_words")

    def __post_init__(self) -> None:
        Preprocessing.__post_init__(self)  # type: ignore[arg-type]  # the same reading of config.json's list

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(vocab_size=self.vocab_size, min_df=self.min_df, max_df=self.max_df,
                             token_rules=self.token_rules, extra_stopwords=self.extra_stopwords,
                             user_words=self.user_words)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["langs"] = list(self.langs) if self.langs is not None else None  # JSON as it always was
        return d


# --------------------------------------------------------------------------- phase 2 (LLM-XTM)


@dataclass(frozen=True)
class Sampling:
    """Sampling settings of LLM refiners (part of the answer cache key)."""

    # 0.7 / 0.7: what the public LLM-XTM code samples with (the paper gives no values); docs/llm_xtm.md.
    temperature: float = setting(0.7, help="LLM sampling temperature.", cli=Cli("--llm-temperature", min=0))
    top_p: float = setting(0.7, help="LLM nucleus sampling: the share of probability mass sampled from.",
                           cli=Cli("--llm-top-p", min=0, max=1, min_open=True))
    max_tokens: int = setting(400, help="Most tokens of one LLM answer.", cli=Cli("--llm-max-tokens", min=16))
    seed: int = setting(0, help="Seed of the LLM's sampling (xtm-train passes its --seed; round r asks with seed + r).")


# Words of a query parameter's name that mark a credential (api_key, access_token, X-Amz-Signature, Azure's
# sig= and its Functions' code=, jwt=); matched as whole words, so passthrough= or session_affinity= pass.
_CREDENTIAL_WORDS = frozenset({"key", "apikey", "token", "secret", "password", "passwd", "pwd", "pass", "auth",
                               "authorization", "sig", "signature", "credential", "credentials", "code", "jwt"})


def _credential_name(name: str) -> bool:
    words = [w for w in re.split(r"[^a-z0-9]+", unquote_plus(name).lower()) if w]
    return not words or any(w in _CREDENTIAL_WORDS or w.endswith(("key", "token", "secret")) for w in words)


def _check_timeout(timeout: Any) -> None:
    """The option's range, for the Python API too: a timeout beyond a day overflowed the client's timers."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 1 <= timeout <= 86400:
        raise XtmError(f"the LLM timeout must be 1 to 86400 seconds, got {timeout!r}")


def check_llm_url(url: str | None, api_key_env: str) -> None:
    """XtmError when --llm-url may carry a credential: user:password@, a query parameter named like a key
    (by whole words of its decoded name), a bare query word (`?sk-...`) or a #fragment. The URL is
    recorded where keys must never be (config.json, every checkpoint, metrics.json, the report); the
    key belongs in $api_key_env, sent as the Authorization header. Other query parameters (Azure's
    api-version=...) are kept. Never echoes the URL's query."""
    if url is None or url == "":
        return
    if not isinstance(url, str):  # a hand-edited config.json or checkpoint: one message, not a traceback
        raise XtmError(f"--llm-url must be a URL (text), not {type(url).__name__}")
    try:
        parts = urlsplit(url)
        credentials = parts.username is not None or parts.password is not None
    except ValueError:
        raise XtmError("--llm-url is not a URL (e.g. http://127.0.0.1:8000/v1)") from None
    query = [q for q in re.split("[&;]", parts.query) if q]
    if credentials or parts.fragment or any("=" not in q or _credential_name(q.split("=", 1)[0]) for q in query):
        raise XtmError(f"--llm-url must not carry a credential (user:password@, a key in its query string, a "
                       f"#fragment): the URL is recorded in the run's config, checkpoints and report; put the API "
                       f"key in ${api_key_env} (--llm-api-key-env), which is sent as the Authorization header")


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def check_api_key_env(name: str) -> None:
    """XtmError unless `name` is an environment variable's name: --llm-api-key-env is recorded in the run's
    config, checkpoints, metrics and report, so a key pasted there instead of its variable's name would be
    written into all of them. The message never echoes the value."""
    if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
        raise XtmError("--llm-api-key-env takes the NAME of the environment variable that holds the API key (e.g. "
                       "OPENAI_API_KEY), not the key: this value is not a variable name (letters, digits, _; at most "
                       "64), and it would be recorded in the run's config, checkpoints and report")
    # A key's shape, not a variable's: mixed case with digits, 20+ characters and no underscore to part words
    # (a variable's name has them: OPENAI_API_KEY, AzureOpenAI_Key_2024), or 40+ characters of that mix.
    mixed = any(c.islower() for c in name) and any(c.isupper() for c in name) and any(c.isdigit() for c in name)
    if mixed and ((len(name) >= 20 and "_" not in name) or len(name) >= 40):
        raise XtmError("--llm-api-key-env takes the NAME of the environment variable that holds the API key (e.g. "
                       "OPENAI_API_KEY), not the key: this value looks like a key itself, and it would be recorded "
                       "in the run's config, checkpoints and report")


@dataclass(frozen=True)
class RefinerConfig:
    """Who refines topics in phase 2, and how an LLM server is reached."""

    backend: str = setting("embedding", help="Phase 2: who refines topics: embedding (no LLM), openai (any "
                                             "OpenAI-compatible server), vllm (in-process, GPU), transformers (small "
                                             "local model).", cli=Cli("--refiner", choices=REFINER_NAMES))
    llm_url: str | None = setting(None, help="openai refiner: server URL, e.g. http://127.0.0.1:8000/v1.",
                                  cli=Cli("--llm-url", type=str))
    llm_model: str | None = setting(None, help="LLM name for the server, or a model path for vllm/transformers.",
                                    cli=Cli("--llm-model", type=str))
    api_key_env: str = setting("OPENAI_API_KEY", help="NAME of the environment variable holding the API key, not "
                                                      "the key (the key is never logged; not set: no key sent, with "
                                                      "a warning unless it is the default).",
                               cli=Cli("--llm-api-key-env"))
    concurrency: int = setting(8, help="openai refiner: requests in flight at once.",
                               cli=Cli("--llm-concurrency", min=1))
    timeout: float = setting(120.0, help="openai refiner: total seconds one attempt may take (connect, TLS, send, "
                                         "wait, read the whole answer, same-origin redirects) before it is retried.",
                             cli=Cli("--llm-timeout", min=1, max=86400))  # (1e10 overflowed the timers)
    retries: int = setting(4, help="openai refiner: attempts after the first one failed (connection errors, "
                                   "timeouts, 429, 5xx), with growing waits between them.",
                           cli=Cli("--llm-retries", min=0, max=100))
    sampling: Sampling = setting(help="How LLM refiners sample.", factory=Sampling)
    # Added for issue 15 (phase 2 kept TU within 0.01 of phase 1 instead of losing 0.06; docs/llm_xtm.md).
    exclusive: bool = setting(True, help="embedding refiner: a word enters only the refined set of the topic whose "
                                         "embedding centroid it is nearest, so the refined sets are disjoint.",
                              cli=Cli("--shared-refined-words", switch=False,
                                      help="Phase 2, embedding refiner: let a word enter several topics' refined "
                                           "sets (before issue 15: costs topic diversity)."))

    def __post_init__(self) -> None:
        check_api_key_env(self.api_key_env)
        check_llm_url(self.llm_url, self.api_key_env)
        _check_timeout(self.timeout)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Phase2Config:
    """LLM-XTM phase 2. Defaults from seed 001 (section 4, appendix G): 30 epochs, R = 5, F = 8, top-15
    words, lambda_mmd = 20,000, lambda_qa in {100, 200, 300}. Where the paper is silent, the authors'
    public code (tienphat140205/LLM-XTM): tau = 0.2 (every public run config), 20 words asked per language
    and the top 15 voted, the learning rate at 0.3 x the base from the first phase-2 epoch, gradients
    clipped at 1.0 for every backbone, and the language-balanced MMD source and target (which the paper
    also describes). Each departure and its measured effect: docs/llm_xtm.md."""

    epochs: int = setting(30, help="Phase-2 epochs after phase 1 (xtm-train: --phase2-epochs, TrainConfig).")
    refine_every: int = setting(8, help="Phase 2: epochs between topic refinements (F).",
                                cli=Cli("--refine-every", min=1))
    rounds: int = setting(5, help="Phase 2: sampled refinements per topic, voted for self-consistency (R).",
                          cli=Cli("--rounds", min=1))
    top_words: int = setting(15, help="Phase 2: each topic's top words per language sent for refinement (N).",
                             cli=Cli("--top-words", min=1))
    refined_words: int = setting(15, help="Phase 2: voted words kept per language and topic (M).",
                                 cli=Cli("--refined-words", min=1))
    lambda_mmd: float = setting(20000.0, help="Phase 2: weight of the MMD loss between model and refined topic words.",
                                cli=Cli("--lambda-mmd", min=0))
    lambda_doc: float = setting(100.0, help="Phase 2: weight of KL(theta || theta_hat) document alignment.",
                                cli=Cli("--lambda-doc", min=0))
    doc_tau: float = setting(0.2, help="Phase 2: temperature of theta_hat = softmax(cos(doc, topic) / tau).",
                             cli=Cli("--doc-tau", min=0, min_open=True))
    mmd: bool = setting(True, help="Phase 2: train with the MMD loss.",
                        cli=Cli("--no-mmd", switch=False,
                                help="Phase 2 without the MMD loss (ablation): the cross-lingual gain stays "
                                     "(it is the document alignment's), the coherence (CNPMI) gain goes "
                                     "(docs/llm_xtm.md)."))
    doc_align: bool = setting(True, help="Phase 2: train with document alignment.",
                              cli=Cli("--no-doc-align", switch=False,
                                      help="Phase 2 ablation: drop document alignment."))
    multi_kernel: bool = setting(False, help="Phase 2: MMD with bandwidths 0.5/1/2 x median.",
                                 cli=Cli("--multi-kernel", switch=True))
    encoder: str = setting(DEFAULT_ENCODER, help="Phase 2: multilingual encoder for word, document and topic "
                                                 "embeddings (or st:<sentence-transformers model>).",
                           cli=Cli("--encoder"))
    refiner: RefinerConfig = setting(help="Phase 2: who refines topics.", factory=RefinerConfig)
    # Fields added for issue 15 (the public code's phase-2 optimisation and MMD form); older runs' configs
    # lack them and read back with these defaults.
    lr_scale: float = setting(0.3, help="Phase 2: learning rate = this x --lr from the first phase-2 epoch on "
                                        "(1: phase 1's rate).", cli=Cli("--phase2-lr-scale", min=0, min_open=True))
    grad_clip: float = setting(1.0, help="Phase 2: clip the gradient norm at this, every backbone (0: only the "
                                         "backbone's own clipping, XTRA's).", cli=Cli("--phase2-grad-clip", min=0))
    balanced_mmd: bool = setting(True, help="Phase 2: language-balanced MMD: each language's top-N words (fixed at "
                                            "each phase-2 epoch start) and refined words weigh 1/L in total.",
                                 cli=Cli("--no-balanced-mmd", switch=False,
                                         help="Phase 2: MMD weights normalised over the union of the languages' "
                                              "words (top-N taken every step), not per language."))
    asked_words: int = setting(20, help="Phase 2: words per language each refinement answer gives (the LLM prompt "
                                        "asks for this many); the vote keeps --refined-words of them.",
                               cli=Cli("--asked-words", min=1))
    refined_support: bool = setting(True, help="Phase 2: the MMD source holds each topic's refined words beside its "
                                               "top-N, so the loss can raise a refined word the model ranks lower "
                                               "instead of only lowering the top words off the set (docs/llm_xtm.md).",
                                    cli=Cli("--mmd-top-only", switch=False,
                                            help="Phase 2: the public code's MMD source, each topic's top-N words "
                                                 "only: the MMD can only push words off the refined set down, and "
                                                 "frequent words take their places (TU falls; docs/llm_xtm.md)."))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Phase2Config:
        return from_dict(cls, d)

    @classmethod
    def migrate(cls, d: dict[str, Any]) -> dict[str, Any]:
        """A recorded phase-2 config as this xtm reads it (applied by `from_dict`)."""
        refiner = d.get("refiner")
        if isinstance(refiner, dict) and "exclusive" not in refiner:
            d = {**d, "refiner": {**refiner, "exclusive": False}}  # written before exclusive sets: shared ones
        refiner = d.get("refiner")
        if isinstance(refiner, dict):
            # Serving settings recorded before xtm refused them (a credential in the URL, a key pasted as the
            # variable's name): a resume replaces them anyway, so such a run still loads, without the value.
            refiner = _without_refused(refiner, "llm_url", None, lambda v: check_llm_url(v, "OPENAI_API_KEY"))
            refiner = _without_refused(refiner, "api_key_env", default_of(RefinerConfig, "api_key_env"),
                                       check_api_key_env)
            d = {**d, "refiner": refiner}
        if "refined_support" not in d:
            d = {**d, "refined_support": False}  # written before the widened MMD source: top-N only
        return d


def _without_refused(refiner: dict[str, Any], key: str, replacement: Any, check: Callable[[Any], None]
                     ) -> dict[str, Any]:
    """`refiner` with its recorded `key` replaced by `replacement` where `check` (XtmError) now refuses it."""
    if key not in refiner:
        return refiner
    try:
        check(refiner[key])
    except XtmError:
        return {**refiner, key: replacement}
    return refiner


# --------------------------------------------------------------------------- topic labels


@dataclass(frozen=True)
class LabelConfig:
    """Topic labels (xtm-label, and xtm-train when training ends): a short name per topic and language.

    Without an LLM (the default: no network) a label is the topic's best-connected top words; with
    one (--refiner openai/vllm/transformers here, or the LLM refiner a phase-2 run names) the LLM
    writes it, and an answer that is not a label falls back. Sampling is labelling's own (a low
    temperature and a few tokens: a label is a name, not an essay), part of the answer cache key.
    """

    backend: str = setting("embedding", help="Who writes the labels: embedding (no LLM: the topic's best-connected "
                                             "top words), openai (any OpenAI-compatible server), vllm (in-process, "
                                             "GPU), transformers (small local model).",
                           cli=Cli("--refiner", choices=REFINER_NAMES))
    llm_url: str | None = _same_as(RefinerConfig, "llm_url")
    llm_model: str | None = _same_as(RefinerConfig, "llm_model")
    api_key_env: str = _same_as(RefinerConfig, "api_key_env")
    concurrency: int = _same_as(RefinerConfig, "concurrency")
    timeout: float = _same_as(RefinerConfig, "timeout")
    retries: int = _same_as(RefinerConfig, "retries")
    top_words: int = setting(10, help="Top words per language a label is made from (shown to the LLM; the fallback "
                                      "chooses among them).", cli=Cli("--top-words", min=2))
    fallback_words: int = setting(3, help="LLM-free labels: how many of the best-connected top words make the label.",
                                  cli=Cli("--fallback-words", min=1))
    max_chars: int = setting(40, help="Longest label accepted from an LLM, in characters (longer: the fallback).",
                             cli=Cli("--max-chars", min=8, max=MAX_LABEL_CHARS))  # what readers of labels.json accept
    max_words: int = setting(6, help="Most words in a label accepted from an LLM (space-separated languages).")
    temperature: float = setting(0.2, help="Labelling LLM's sampling temperature.",
                                 cli=Cli("--llm-temperature", min=0))
    top_p: float = setting(0.9, help="Labelling LLM's nucleus sampling share.",
                           cli=Cli("--llm-top-p", min=0, max=1, min_open=True))
    max_tokens: int = setting(24, help="Most tokens of one labelling answer.", cli=Cli("--llm-max-tokens", min=4))
    seed: int = setting(0, help="Seed of the labelling LLM's sampling.", cli=Cli("--seed", min=0, max=SEED_MAX))

    def __post_init__(self) -> None:
        check_api_key_env(self.api_key_env)
        check_llm_url(self.llm_url, self.api_key_env)
        _check_timeout(self.timeout)
        if not isinstance(self.max_chars, int) or not 8 <= self.max_chars <= MAX_LABEL_CHARS:
            raise XtmError(f"max_chars must be 8 to {MAX_LABEL_CHARS} (what labels.json readers accept), "
                           f"got {self.max_chars!r}")

    @property
    def uses_llm(self) -> bool:
        return self.backend != "embedding"

    @property
    def sampling(self) -> Sampling:
        return Sampling(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens, seed=self.seed)

    def refiner(self) -> RefinerConfig:
        """The LLM connection as the refiner clients take it (xtm.trainer.phase2.refiners, llm_http, local_llms)."""
        return RefinerConfig(backend=self.backend, llm_url=self.llm_url, llm_model=self.llm_model,
                             api_key_env=self.api_key_env, concurrency=self.concurrency, timeout=self.timeout,
                             retries=self.retries, sampling=self.sampling)

    @classmethod
    def after_training(cls, phase2: Phase2Config | None) -> LabelConfig:
        """What xtm-train labels with: the LLM phase 2 was given, else the LLM-free fallback (no network
        unless the run already uses one)."""
        r = phase2.refiner if phase2 is not None else None
        if r is None or r.backend == "embedding":
            return cls()
        return cls(backend=r.backend, llm_url=r.llm_url, llm_model=r.llm_model, api_key_env=r.api_key_env,
                   concurrency=r.concurrency, timeout=r.timeout, retries=r.retries, seed=r.sampling.seed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- training


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")


def check_device_name(name: str) -> str:
    """`--device`'s value, refused before any work when it names no device torch trains on."""
    if not isinstance(name, str) or not _DEVICE.fullmatch(name):
        raise XtmError(f"--device {name!r} is not a device: give auto, cpu, cuda or cuda:N (mps on a Mac)")
    return name


@dataclass(frozen=True)
class TrainConfig:
    """The backbone and its phase-1 training (config.json and the checkpoints' "train_config")."""

    model: str = setting("infoctm", help="Backbone: nmtm and infoctm align through --dict; xtra through "
                                         "multilingual sentence embeddings (no dictionary needed); gloctm "
                                         "through multilingual word and sentence embeddings, --dict optional "
                                         "(its links are added to the word neighbours).",
                         cli=Cli("--model", choices=MODEL_NAMES, case_sensitive=False))
    num_topics: int = setting(50, help="Number of topics K (shared across languages).",
                              cli=Cli("--topics", min=2, max=10000))
    epochs: int = setting(100, help="Phase-1 epochs (each draws every document of the largest language once).",
                          cli=Cli("--epochs", min=1))
    batch_size: int | None = setting(None, help="Documents per language in one training step (default: the "
                                                "--recipe's: 200; nmtm 50 under the fast recipe).",
                                     cli=Cli("--batch-size", type=int, min=2, max=1_000_000))
    # None until the recipe fills it in (every config.json records the rate it trained with)
    lr: float | None = setting(None, help="Adam learning rate (default: the --recipe's: 0.002; nmtm 0.001 under "
                                          "the authors recipe).", cli=Cli("--lr", type=float, min=0, min_open=True))
    seed: int = setting(0, help="Seed of the initialisation, the batch order, the JSONL hold-out split and "
                                "phase 2's sampling.", cli=Cli("--seed", min=0, max=SEED_MAX))
    device: str = setting("auto", help="auto, cpu, cuda or cuda:N.", cli=Cli("--device"))
    checkpoint_every: int = setting(10, help="Epochs between checkpoints (0: only at the end); the two newest are "
                                             "kept.", cli=Cli("--checkpoint-every", min=0))
    threads: int | None = setting(None, help="CPU threads for torch (default: the cores other processes leave "
                                             "free; with --resume, the count the run started with).",
                                  cli=Cli("--threads", type=int, min=1, max=MAX_THREADS))
    cache_dir: str | None = setting(None, help="Cache directory: embeddings/ (documents, words, the contextual "
                                               "route's sentence features) and llm-answers/ (LLM answers of "
                                               "phase 2 and of the labels); default: $XTM_CACHE_DIR, else "
                                               "$XDG_CACHE_HOME/xtm, else ~/.cache/xtm.",
                                    cli=Cli("--cache-dir", path="dir"))
    progress: bool = setting(True, help="Progress bars on stderr.",
                             cli=Cli("-q --quiet", switch=False, tty=True, help="No progress bars."))
    hparams: dict[str, Any] = setting(
        help="Backbone hyper-parameters over the backbone's own defaults (docs/backbones.md).", factory=dict,
        cli=Cli("--set", multiple=True, metavar="KEY=VALUE", parse=parse_key_values,
                help="Backbone hyper-parameter, e.g. --set hidden=100 --set dropout=0.2 (repeatable; each "
                     "backbone's keys and defaults: docs/backbones.md; an unknown key is refused with the known "
                     "ones before the data is read)."))
    # LLM-XTM phase 2 epochs after `epochs` phase-1 epochs (0: phase 1 only); see trainer/phase2/objective.py.
    phase2_epochs: int = setting(0, help=f"LLM-XTM phase-2 epochs after the --epochs of phase 1 (the paper uses "
                                         f"{default_of(Phase2Config, 'epochs')}; 0: no phase 2).",
                                 cli=Cli("--phase2-epochs", min=0))
    eval_every: int = setting(0, help="Evaluate every N epochs (TU, classification, CNPMI with --ref-corpus) into "
                                      "history.json and the report: one run gives its learning curve (0: only at "
                                      "the end). Training itself is unchanged.", cli=Cli("--eval-every", min=0))
    topic_lr_scale: float | None = setting(None, help="Learning rate of the topic-word weights = this x --lr (the "
                                                     "encoders keep --lr; default: the --recipe's: 1; nmtm 5 under "
                                                     "the fast recipe).",
                                           cli=Cli("--topic-lr-scale", type=float, min=0, min_open=True))
    # Issue 15 (field at the end: config.json files written before lack it; they record batch_size and
    # topic_lr_scale themselves, so they read back as they were trained).
    recipe: str = setting("fast", help="Defaults of --batch-size, --lr, --topic-lr-scale, --lr-schedule and some "
                                       "--set values: fast "
                                       "(gives in the default 100 epochs what the papers' settings give in 500, "
                                       "measured on learning curves in docs/benchmarks.md; differs from the "
                                       "papers for nmtm: batch 50, topic rate 5x, and infoctm: --set "
                                       "bn_eps=1e-10), paper (the papers' as TopMost runs them: batch 200, one "
                                       "rate, their batch-norm eps) or authors (the LLM-XTM authors' code, "
                                       "where the published rows come from: batch 128, --lr-schedule step, "
                                       "nmtm/infoctm hidden=100 grad_clip=1, nmtm --lr 0.001).",
                          cli=Cli("--recipe", choices=tuple(RECIPES)))
    lr_schedule: str | None = setting(None, help="How the phase-1 learning rate moves: constant (TopMost's), "
                                                 "cosine (from --lr down to 0 along a half cosine over --epochs) "
                                                 "or step (the authors' code: halved every 125 epochs, xtra 250); "
                                                 "phase 2 resets to its own rate (step: halved at the same epochs); "
                                                 "default: the --recipe's: constant.",
                                      cli=Cli("--lr-schedule", type=str, choices=LR_SCHEDULES))

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise XtmError(f"recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        if self.lr_schedule is not None and self.lr_schedule not in LR_SCHEDULES:
            raise XtmError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if not isinstance(self.hparams, dict):
            raise XtmError(f"hparams must map backbone hyper-parameters to values (KEY=VALUE), got "
                           f"{type(self.hparams).__name__}")
        recipe = dict(RECIPES[self.recipe].get(str(self.model).lower(), {}))
        # backbone hyper-parameters the recipe sets, under what --set gives (recorded in config.json with them)
        object.__setattr__(self, "hparams", {**recipe.pop("hparams", {}), **self.hparams})
        for name, value in {**PAPER_TRAINING, **recipe}.items():
            if getattr(self, name) is None:  # not given: the recipe's (frozen: set once, here)
                object.__setattr__(self, name, value)

    def describe(self) -> str:
        """One log line: the backbone and what the recipe and the options make of its training."""
        step = f" (halved every {lr_step_epochs(str(self.model))} epochs)" if self.lr_schedule == "step" else ""
        over = "; " + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.hparams.items()) \
            if self.hparams else ""
        return (f"training {self.model}, K={self.num_topics}, {self.epochs} epochs, recipe {self.recipe}: batch "
                f"{self.batch_size}, Adam {self.lr:g} ({self.topic_lr_scale:g}x for the topic-word weights), "
                f"{self.lr_schedule} rate{step}{over}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- a run


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """One xtm-train run: the data, the training, phase 2, and what the command does around them."""

    out: str = setting(help="Run directory to write.", cli=Cli("--out", path="dir", required=True))
    data: DataConfig = setting(help="The corpus and how it is read.")
    train: TrainConfig = setting(help="The backbone and phase-1 training.", factory=TrainConfig)
    phase2: Phase2Config | None = setting(None, help="LLM-XTM phase 2 (None: phase 1 only).")
    resume: bool = setting(False, help="Continue from the last checkpoint in --out, with the settings the run's "
                                       "config.json records for every option not given (--epochs N: train to N).",
                           cli=Cli("--resume", switch=True))
    # The contextual route is fitted by default (issue 14: any language, by default). None: fit it when the
    # run allows (not out of core, document texts at hand), else say why and finish without it; True
    # (--contextual): required, its failure fails the command; no_contextual (--no-contextual): never.
    contextual: bool | None = setting(None, help="Require the contextual route (fitted by default when the run "
                                                 "allows it): fail instead of finishing without it.",
                                      cli=Cli("--contextual", switch=True))
    no_contextual: bool = setting(False, help="After training, do not fit the contextual inference network "
                                              "(xtm-contextual with its defaults, fitted by default): bundles then "
                                              "read only the training languages, by their bags of words.",
                                  cli=Cli("--no-contextual", switch=True))

    def __post_init__(self) -> None:
        if self.contextual and self.no_contextual:
            raise XtmError("--contextual and --no-contextual contradict each other: choose one")
        if self.contextual and self.data.out_of_core:
            raise XtmError("--contextual embeds every training document's text; it cannot follow an --out-of-core "
                           "run (fit it on a corpus that fits in memory with xtm-contextual)")

    @property
    def fits_contextual(self) -> bool:
        """Whether xtm-train fits the contextual route after training (default: unless out of core)."""
        return not self.no_contextual and (bool(self.contextual) or not self.data.out_of_core)


# --------------------------------------------------------------------------- the contextual route


@dataclass(frozen=True)
class ContextualConfig:
    """xtm-contextual: the contextual inference network of a finished run (contextual.json "config")."""

    encoder: str = setting(DEFAULT_ENCODER, help="Sentence encoder: use-multilingual (offline) or "
                                                 "st:<sentence-transformers model or path>.", cli=Cli("--encoder"))
    objective: str = setting("distill", help="distill: imitate the bag-of-words theta; ctm: ELBO through the run's "
                                             "frozen decoder.", cli=Cli("--objective", choices=CONTEXTUAL_OBJECTIVES))
    # distill + topic classification: measured best for the auto route (docs/contextual.md, Choice 1)
    lambda_tc: float = setting(1.0, help="Weight of topic classification (labels: each document's argmax "
                                         "bag-of-words topic).", cli=Cli("--lambda-tc", min=0))
    epochs: int = setting(30, help="Epochs of the head.", cli=Cli("--epochs", min=1))
    batch_size: int = setting(256, help="Documents per step of the head.", cli=Cli("--batch-size", min=2))
    lr: float = setting(2e-3, help="Adam learning rate of the head.", cli=Cli("--lr", min=0, min_open=True))
    hidden: int = setting(200, help="Hidden width of the head.", cli=Cli("--hidden", min=1, max=100_000))
    dropout: float = setting(0.2, help="Dropout of the head.", cli=Cli("--dropout", min=0, max=1, max_open=True))
    finetune_epochs: int = setting(0, help="Fine-tune the encoder on topic classification first (USE: its top "
                                           "layers; sentence-transformers: the whole model). 0: frozen encoder.",
                                   cli=Cli("--finetune-epochs", min=0))
    finetune_lr: float = setting(1e-4, help="Adam learning rate of the encoder's fine-tuning.",
                                 cli=Cli("--finetune-lr", min=0, min_open=True))
    finetune_batch_size: int = setting(64, help="Documents per fine-tuning step.")
    max_tokens: int = setting(DEFAULT_MAX_TOKENS, help="Tokens read per document (training and inference); longer "
                                                       "documents are cut.",
                              cli=Cli("--max-tokens", min=3, max=1_000_000))
    seed: int = setting(0, help="Seed of the head's initialisation and batch order.",
                        cli=Cli("--seed", min=0, max=SEED_MAX))
    device: str = setting("cpu", help="cpu, cuda or cuda:N.", cli=Cli("--device"))
    threads: int | None = setting(None, help="CPU threads for torch (default: the cores other processes leave "
                                             "free, except for the head's training steps on a CPU: 1).",
                                  cli=Cli("--threads", type=int, min=1, max=MAX_THREADS))
    cache_dir: str | None = setting(None, help="Cache for sentence features, in embeddings/ (default: "
                                               "$XTM_CACHE_DIR, else $XDG_CACHE_HOME/xtm, else ~/.cache/xtm).",
                                    cli=Cli("--cache-dir", path="dir"))
    progress: bool = setting(False, help="Progress output on stderr.",
                             cli=Cli("-q --quiet", switch=False, tty=True, help="No progress output."))
    # Issue 14 (fields at the end: contextual.json files written before lack them and read back as
    # the defaults below; docs/contextual.md "Choice" has the measurements behind each value).
    lambda_xl: float = setting(5.0, help="Weight of cross-lingual consistency: symmetric KL between the theta of "
                                         "pseudo-parallel training documents of two languages, mined with the "
                                         "sentence encoder (margin-based mutual nearest neighbours; 0: off).",
                               cli=Cli("--lambda-xl", min=0))
    xl_neighbors: int = setting(4, help="Neighbours k of the mining margin (cosine over the mean cosine of each "
                                        "side's k nearest neighbours in the other language).",
                                cli=Cli("--xl-neighbors", min=1))
    lambda_smooth: float = setting(10.0, help="Weight of noise consistency: symmetric KL between theta(e) and "
                                              "theta(e + Gaussian noise) of a sentence embedding e; needs no "
                                              "language, so it also holds for languages the run never saw (0: off).",
                                   cli=Cli("--lambda-smooth", min=0))
    smooth_sigma: float = setting(0.05, help="Per-dimension standard deviation of that noise on the unit embedding.",
                                  cli=Cli("--smooth-sigma", min=0))
    auto_route: str = setting("contextual", help="What xtm-infer --route auto serves the training languages with in "
                                                 "this run's bundles: contextual (one network for every language, so "
                                                 "a document and its translation get topics from the same function) "
                                                 "or bow (their bags of words, as before issue 14).",
                              cli=Cli("--auto-route", choices=CONTEXTUAL_AUTO_ROUTES))
    # After issue 14: contextual.json files written before lack it (they were fitted with 0).
    teacher_debias: float = setting(1.0, help="Divide each language's bag-of-words theta by that language's mean "
                                              "theta (to this power) before the head learns from it: removes the "
                                              "topics a language's bag of words gives every document, which the "
                                              "other languages' do not (0: the raw theta).",
                                    cli=Cli("--teacher-debias", min=0))

    # After issue 14's Choice 8: contextual.json files written before lack it (they were fitted with 1).
    # 0.1: news Match 78.4 -> 84.6% (mean of 4 seeds, 120 items), Kyoto 61.7 -> 64.0%, classification of the
    # other languages 2-4 points lower (docs/contextual.md, Choice 8).
    teacher_others: float = setting(0.1, help="Weight of the teacher (distillation or CTM term, and topic "
                                              "classification) for documents of the training languages after the "
                                              "first (1: every language learns from its own bag of words; 0: only "
                                              "the first does, and the others reach its topics through the mined "
                                              "pairs and the multilingual encoder, as unseen languages do). Low "
                                              "values make a document and its translation agree more.",
                                    cli=Cli("--teacher-others", min=0, max=1))
    # After Choice 9: real translations as extra consistency pairs (docs/contextual.md). Not in
    # contextual.json's config (a path on the fitting machine); its metrics name the file by name and hash.
    parallel: str | None = setting(None, help="JSONL of translations, one object per line mapping language codes "
                                              "to the same text ({\"en\": \"...\", \"ja\": \"...\"}; any "
                                              "languages the encoder reads): their theta is pulled together like "
                                              "the mined pairs', with weight --lambda-xl.",
                                   cli=Cli("--parallel", path="file", exists=True))

    def check(self) -> None:
        if self.objective not in CONTEXTUAL_OBJECTIVES:
            raise XtmError(f"contextual objective must be one of {', '.join(CONTEXTUAL_OBJECTIVES)}, "
                           f"got {self.objective!r}")
        for name in ("epochs", "batch_size", "hidden", "max_tokens", "finetune_batch_size"):
            if getattr(self, name) < 1:
                raise XtmError(f"contextual {name} must be at least 1, got {getattr(self, name)}")
        if self.lambda_tc < 0 or self.finetune_epochs < 0 or not 0 <= self.dropout < 1:
            raise XtmError("contextual lambda_tc and finetune_epochs must be >= 0, dropout in [0, 1)")
        if min(self.lambda_xl, self.lambda_smooth, self.smooth_sigma, self.teacher_debias) < 0 or self.xl_neighbors < 1:
            raise XtmError("contextual lambda_xl, lambda_smooth, smooth_sigma and teacher_debias must be >= 0, "
                           "xl_neighbors >= 1")
        if not 0 <= self.teacher_others <= 1:
            raise XtmError(f"contextual teacher_others must be in [0, 1], got {self.teacher_others}")
        if self.auto_route not in CONTEXTUAL_AUTO_ROUTES:
            raise XtmError(f"contextual auto_route must be one of {', '.join(CONTEXTUAL_AUTO_ROUTES)}, "
                           f"got {self.auto_route!r}")
        if self.parallel is not None and self.lambda_xl <= 0:
            raise XtmError("contextual parallel text is used by the cross-lingual consistency term: it needs "
                           f"lambda_xl > 0, got {self.lambda_xl}")

    def to_dict(self) -> dict[str, Any]:
        """contextual.json's settings: those that shape the fitted network (not where or how fast it ran)."""
        d = asdict(self)
        for k in ("device", "threads", "cache_dir", "progress", "parallel"):
            d.pop(k)
        return d
