"""Phase 2 with a real LLM: SmolLM2-135M-Instruct answering through a real OpenAI-compatible
server (`transformers serve`) started here on 127.0.0.1, and the same model in-process through
the transformers refiner. Its answers are poor; these tests prove the plumbing, the parser and
the fallbacks on real model output, and that a repeated run makes no new calls."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from xtm.config import DataConfig, Phase2Config, RefinerConfig, Sampling, TrainConfig
from xtm.trainer.run import run_training

pytest.importorskip("transformers")
from llm_server import convert_smollm2, serve  # noqa: E402

pytestmark = pytest.mark.slow
K, R = 3, 2


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory) -> Path:
    return convert_smollm2(tmp_path_factory.mktemp("llm") / "smollm2")


def phase2_run(example_dir: Path, out: Path, refiner: RefinerConfig, cache: Path) -> dict:
    data = DataConfig(path=str(example_dir / "docs.jsonl"), dict_path=str(example_dir / "dict.tsv"))
    cfg = TrainConfig(model="nmtm", num_topics=K, epochs=3, checkpoint_every=0, progress=False, seed=0,
                      cache_dir=str(cache))
    p2 = Phase2Config(epochs=1, refine_every=1, rounds=R, top_words=5, refined_words=5, refiner=refiner)
    return run_training(data, cfg, out, phase2=p2)


def test_phase2_with_smollm2_behind_an_openai_compatible_server(smollm2_dir, example_dir, tmp_path) -> None:
    refiner = RefinerConfig(backend="openai", llm_model=str(smollm2_dir), concurrency=2, timeout=300, retries=1,
                            sampling=Sampling(temperature=1.0, max_tokens=48, seed=0))
    with serve(smollm2_dir) as url:
        refiner = dataclasses.replace(refiner, llm_url=url)
        m = phase2_run(example_dir, tmp_path / "a", refiner, tmp_path / "cache")
        step = m["phase2"]["steps"][0]
        assert m["epochs"] == 4 and not m["interrupted"]
        assert step["answers"] == K * R and step["failures"] == 0
        assert step["calls"] == K * R and step["completion_tokens"] > 0 and step["prompt_tokens"] > 0
        events = m["phase2"]["events"]
        # every answer was either used or counted as unusable; poor answers leave counted traces
        assert step["usable_answers"] + events.get("unusable_answers", 0) == K * R
        assert events.get("words_dropped", 0) + events.get("words_mapped", 0) > 0
        refined = (tmp_path / "a" / "refined_topics_en.txt").read_text().splitlines()
        assert len(refined) == K and all(line.split() for line in refined)
        assert m["TU"] > 0 and "refined" in m

        # The same run again: usable answers come from the cache; unusable ones were never cached
        # (one empty answer must not poison later runs) and are asked again, and only they are.
        again = phase2_run(example_dir, tmp_path / "b", refiner, tmp_path / "cache")
        step2 = again["phase2"]["steps"][0]
        assert step2["cache_hits"] == step["usable_answers"] and step2["stale_cache"] == 0
        assert step2["calls"] >= K * R - step["usable_answers"]
        if step["usable_answers"] == K * R:
            assert step2["calls"] == 0
            assert (tmp_path / "b" / "refined_topics_en.txt").read_text().splitlines() == refined
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert saved["phase2"]["refiner"]["backend"] == "openai"


def test_transformers_refiner_runs_the_model_in_process(smollm2_dir, example_corpus) -> None:
    from xtm.trainer.phase2.answer_parser import VocabMatcher
    from xtm.trainer.phase2.local_llms import TransformersGenerator
    from xtm.trainer.phase2.prompt import TopicWords
    from xtm.trainer.phase2.refiners import LLMRefiner, StepStats

    vocabs = {lc.lang: lc.vocab for lc in example_corpus.languages}
    gen = TransformersGenerator(str(smollm2_dir))
    r = LLMRefiner(gen, VocabMatcher(vocabs), n_words=5, sampling=Sampling(max_tokens=32, seed=1))
    topic = TopicWords(0, {"en": ["player", "team", "match"], "zh": ["球员", "比赛"]})
    answers, stats = r.refine([topic], rounds=2)
    assert stats.calls == 1 and stats.completion_tokens > 0 and len(answers[0]) == 2
    # Temperature 0 is greedy decoding: one answer, the same for every round (was a ValueError traceback).
    greedy = LLMRefiner(gen, VocabMatcher(vocabs), n_words=5, sampling=Sampling(temperature=0, max_tokens=16))
    texts = gen.generate(["Name two sports words."], 3, Sampling(temperature=0, max_tokens=16, seed=1), StepStats())
    again = gen.generate(["Name two sports words."], 1, Sampling(temperature=0, max_tokens=16, seed=2), StepStats())
    assert len(texts[0]) == 3 and texts[0][0] and again[0] == texts[0][:1]  # the seed changes nothing: greedy
    answers, stats = greedy.refine([topic], rounds=2)
    assert stats.calls == 1 and len(answers[0]) == 2


def test_a_model_transformers_cannot_load_stops_before_phase_1(tmp_path: Path) -> None:
    """Found by a review: an empty directory as --llm-model was a ValueError traceback, in xtm-train only
    after the whole of phase 1 (the model was loaded at the first refinement)."""
    from xtm.errors import XtmError
    from xtm.trainer.phase2.refiners import make_refiner

    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    for model in (empty, broken):
        cfg = RefinerConfig(backend="transformers", llm_model=str(model))
        with pytest.raises(XtmError, match=f"--llm-model '{model}' cannot be loaded by transformers"):
            make_refiner(cfg, {"en": ["a"]}, dict, n_words=5, cache_dir=None)


def test_a_loadable_model_is_checked_not_loaded_when_the_refiner_is_built(smollm2_dir: Path) -> None:
    """The weights load at the first answer not in the cache: none during phase 1, none on a fully cached rerun."""
    from xtm.trainer.phase2.refiners import make_refiner

    r = make_refiner(RefinerConfig(backend="transformers", llm_model=str(smollm2_dir)), {"en": ["a"]}, dict,
                     n_words=5, cache_dir=None)
    assert r.generator._lm is None
