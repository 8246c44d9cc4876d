"""The LLM answer cache against what it cannot store and what others plant in its directory.

Found by a review (F1, F9): an answer holding a lone surrogate (JSON's "\\ud800" escape decodes to one) crashed
`AnswerCache.put` with a UnicodeEncodeError traceback, from every backend; a symlink planted at an entry's path
had its target replaced by the answer (atomic_open follows links), and a FIFO there hung the read (and the
write) for ever. The embeddings cache's rule holds here too: an entry that is a symlink or not a regular file
is neither read nor written through.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest
from command_logging import train_stderr  # noqa: F401  (a fixture)

from xtm.config import Sampling
from xtm.trainer.phase2.answer_cache import AnswerCache
from xtm.trainer.phase2.answer_parser import VocabMatcher
from xtm.trainer.phase2.prompt import TopicWords
from xtm.trainer.phase2.refiners import LLMRefiner, StepStats

pytestmark = pytest.mark.usefixtures("train_stderr")

SAMPLING = Sampling(max_tokens=50, seed=7)
LONE = "EN: player - team - \ud800\nZH: 球员"
VOCABS = {"en": ["player", "team"], "zh": ["球员", "球队"]}


def key(n: int) -> str:
    return AnswerCache.key("openai:m@http://127.0.0.1:1/v1", f"prompt-{n}", 0, SAMPLING)


def planted(cache: AnswerCache, k: str) -> Path:
    p = cache._path(k)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def in_thread(fn, timeout: float = 10.0):
    """fn() in a daemon thread; (done, result): a call that blocks for ever fails the test, never hangs it."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(timeout)
    return (not t.is_alive()), (out[0] if out else None)


# -- F1: an answer the cache cannot store ---------------------------------------------------------------


def test_an_answer_with_a_lone_surrogate_is_used_not_cached_and_the_cache_stays_on(tmp_path, capsys) -> None:
    cache = AnswerCache(tmp_path)
    cache.put(key(1), LONE)                      # was: UnicodeEncodeError out of put
    cache.put(key(2), LONE)
    assert cache.get(key(1)) is None and cache.get(key(2)) is None
    err = capsys.readouterr().err
    assert err.count("cannot be stored in the answer cache") == 1 and "used but not cached" in err
    assert "Traceback" not in err
    cache.put(key(3), "EN: player")              # one unstorable answer does not turn the cache off
    assert cache.get(key(3)) == "EN: player"
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [f"{key(3)}.json"]


class SurrogateGenerator:
    """An in-process backend (as transformers' is) whose model emits half of a surrogate pair."""

    id = cache_id = "fake:surrogate"

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, prompts, rounds, sampling, stats):
        self.calls += 1
        stats.add(calls=1)
        return [[LONE] * rounds for _ in prompts]


def test_a_refinement_whose_answer_holds_a_lone_surrogate_does_not_crash(tmp_path) -> None:
    gen = SurrogateGenerator()
    r = LLMRefiner(gen, VocabMatcher(VOCABS), n_words=5, sampling=SAMPLING, cache=AnswerCache(tmp_path))
    topic = TopicWords(0, {"en": ["player", "team"], "zh": ["球员", "球队"]})
    answers, stats = r.refine([topic], rounds=2)
    assert all(a.usable and a.words["en"] == ["player", "team"] for a in answers[0])
    assert stats.calls == 1 and isinstance(stats, StepStats)
    r.refine([topic], rounds=2)                  # not cached: asked again, never a stale entry
    assert gen.calls == 2


# -- F9: what is planted at an entry's path ---------------------------------------------------------------


def test_a_symlink_at_an_entry_is_not_read_and_its_target_is_never_written(tmp_path, capsys) -> None:
    cache = AnswerCache(tmp_path / "c")
    victim = tmp_path / "thesis.txt"
    victim.write_text('{"text": "EN: player"}\n')          # even one that reads as an entry is not read
    p = planted(cache, key(1))
    p.symlink_to(victim)
    assert cache.get(key(1)) is None
    cache.put(key(1), "EN: team")
    assert victim.read_text() == '{"text": "EN: player"}\n'   # was: replaced by the answer
    assert not p.is_symlink() and stat.S_ISREG(os.lstat(p).st_mode)  # the link itself was replaced
    assert cache.get(key(1)) == "EN: team"
    assert "is a symlink, not an entry of ours" in capsys.readouterr().err


def test_a_dangling_symlink_at_an_entry_creates_nothing_at_its_target(tmp_path) -> None:
    cache = AnswerCache(tmp_path / "c")
    p = planted(cache, key(1))
    p.symlink_to(tmp_path / "created-by-xtm.txt")
    assert cache.get(key(1)) is None
    cache.put(key(1), "EN: team")
    assert not (tmp_path / "created-by-xtm.txt").exists() and cache.get(key(1)) == "EN: team"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
@pytest.mark.parametrize("how", ["fifo", "link to a fifo"])
def test_a_fifo_at_an_entry_neither_blocks_the_read_nor_the_write(how: str, tmp_path) -> None:
    cache = AnswerCache(tmp_path / "c")
    p = planted(cache, key(1))
    fifo = p if how == "fifo" else tmp_path / "pipe"
    os.mkfifo(fifo)
    if how != "fifo":
        p.symlink_to(fifo)
    done, got = in_thread(lambda: cache.get(key(1)))
    assert done and got is None                  # was: blocked for ever waiting for a writer
    done, _ = in_thread(lambda: cache.put(key(1), "EN: team"))
    assert done                                  # was: blocked for ever waiting for a reader (written in place)
    assert stat.S_ISREG(os.lstat(p).st_mode)    # the FIFO (or the link) itself replaced by the entry
    if how != "fifo":
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # the link's target untouched
    assert cache.get(key(1)) == "EN: team"


def test_a_directory_at_an_entry_is_left_alone_and_the_cache_stays_on(tmp_path) -> None:
    cache = AnswerCache(tmp_path / "c")
    p = planted(cache, key(1))
    p.mkdir()
    (p / "mine.txt").write_text("x")
    assert cache.get(key(1)) is None
    cache.put(key(1), "EN: team")
    assert (p / "mine.txt").read_text() == "x"
    cache.put(key(2), "EN: player")
    assert cache.get(key(2)) == "EN: player"


def test_a_shard_directory_that_is_a_symlink_is_neither_written_into_nor_evicted_from(tmp_path) -> None:
    """A shard (`llm-answers/<2 hex>/`) linked to a user's directory: nothing written there, and eviction, which
    deletes files named like entries, never follows the link (it did: glob followed linked directories)."""
    mine = tmp_path / "mine"
    mine.mkdir()
    k1 = key(1)
    (mine / f"{k1}.json").write_text('{"text": "' + "x" * 500 + '"}\n')  # named like an entry: still the user's
    cache = AnswerCache(tmp_path / "c", max_bytes=400)
    cache.dir.mkdir(parents=True)
    (cache.dir / k1[:2]).symlink_to(mine, target_is_directory=True)
    cache.put(k1, "EN: team")
    others = [key(n) for n in range(2, 50) if key(n)[:2] != k1[:2]][:2]
    cache.put(others[0], "EN: player " + "y" * 300)
    cache.put(others[1], "EN: team " + "z" * 300)  # past the bound: eviction runs
    assert cache.get(others[1]) is not None
    assert sorted(q.name for q in mine.iterdir()) == [f"{k1}.json"]
    assert (mine / f"{k1}.json").read_text().startswith('{"text": "xxx')


def test_an_entry_behind_a_symlinked_shard_is_not_served(tmp_path) -> None:
    """get() followed a shard directory that is a link and served a file planted behind it as the answer."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    k = key(1)
    (elsewhere / f"{k}.json").write_text('{"text": "EN: planted"}\n')
    cache = AnswerCache(tmp_path / "c")
    cache.dir.mkdir(parents=True)
    (cache.dir / k[:2]).symlink_to(elsewhere, target_is_directory=True)
    assert cache.get(k) is None
    cache.put(k, "EN: team")  # nor written into it
    assert (elsewhere / f"{k}.json").read_text() == '{"text": "EN: planted"}\n' and len(list(elsewhere.iterdir())) == 1


def test_temporaries_left_by_a_killed_writer_are_removed_and_nothing_else(tmp_path) -> None:
    """xtm.atomic's rule, for any entry's temporary (an entry is written once: its own rewrite never comes)."""
    cache = AnswerCache(tmp_path)
    k, other_key = key(1), key(2)
    shard = planted(cache, k).parent
    dead = shard / f".{other_key}.json.xtm-4194303-0123abcd.tmp"  # pid_max: no such process
    live = shard / f".{other_key}.json.xtm-{os.getppid()}-89abcdef.tmp"  # a writer that is still running
    other = shard / "notes.tmp"
    for f in (dead, live, other):
        f.write_text("partial")
        os.utime(f, (time.time() - 60, time.time() - 60))
    cache.put(k, "EN: team")                     # the first write scans the cache
    assert not dead.exists() and live.exists() and other.exists()
    assert cache.get(k) == "EN: team"
    assert not [q for q in shard.iterdir() if q.name.startswith(f".{k}.json.xtm-{os.getpid()}-")]


def test_an_entry_written_here_is_a_regular_file_with_the_usual_permissions(tmp_path) -> None:
    cache = AnswerCache(tmp_path)
    old = os.umask(0o022)
    try:
        cache.put(key(1), "EN: team")
    finally:
        os.umask(old)
    st = os.lstat(cache._path(key(1)))
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o644
