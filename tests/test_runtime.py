"""The torch-free runtime on a real (hand-made) bundle: loading, validation, inference, threads, no torch."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from bundle_fixture import EN_VOCAB, HandBundle, make_bundle

import xtm
from xtm.errors import XtmError
from xtm.runtime import TopicModel
from xtm.runtime.bundle import read_manifest

EN_TEXTS = ["The stock market, the STOCK price!", "Football: the team scored a goal in the match",
            "A new film with a famous actor and a song", "Doctors at the hospital study the virus",
            "Space research on a planet"]
ZH_TEXTS = ["北京的经济增长很快，市场价格上涨", "中国足球队在比赛中进球"]


@pytest.fixture(scope="module")
def hb(tmp_path_factory: pytest.TempPathFactory) -> HandBundle:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "b")


@pytest.fixture(scope="module")
def model(hb: HandBundle) -> TopicModel:
    return TopicModel.load(hb.path)


def copy_bundle(hb: HandBundle, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(hb.path, dst)
    return dst


def edit_manifest(bundle: Path, **changes: object) -> None:
    p = bundle / "manifest.json"
    m = json.loads(p.read_text())
    m.update(changes)
    p.write_text(json.dumps(m))


def test_load_describes_the_bundle(model: TopicModel, hb: HandBundle) -> None:
    assert model.languages == ["en", "zh"]
    assert model.num_topics == hb.num_topics
    assert len(model.topics) == hb.num_topics
    assert set(model.topics[0]) == {"en", "zh"} and len(model.topics[0]["en"]) == 15
    assert model.vocabulary("en") == EN_VOCAB
    assert model.topic_word_weights("zh").shape == (hb.num_topics, len(hb.vocabs["zh"]))
    assert "CPUExecutionProvider" in model.providers


def test_infer_shapes_and_distributions(model: TopicModel) -> None:
    res = model.infer(EN_TEXTS + ZH_TEXTS, top_k=2)
    n = len(EN_TEXTS) + len(ZH_TEXTS)
    assert res.theta.shape == (n, model.num_topics) and res.theta.dtype == np.float32
    np.testing.assert_allclose(res.theta.sum(axis=1), 1.0, atol=1e-5)
    assert len(res) == n and res.empty.shape == (n,) and not res.empty.any()
    for row, tops in zip(res.theta, res.top_topics, strict=True):
        assert [k for k, _ in tops] == list(np.argsort(-row, kind="stable")[:2])
        assert tops[0][1] >= tops[1][1]
    described = res.top_topics_with_words(n_words=4)
    assert described[0][0]["id"] == res.top_topics[0][0][0]
    assert set(described[0][0]["words"]) == {"en", "zh"} and len(described[0][0]["words"]["zh"]) == 4
    assert model.infer(EN_TEXTS, langs="en", top_k=100).top_topics[0].__len__() == model.num_topics


def test_theta_matches_a_numpy_forward_of_the_tiny_model(model: TopicModel, hb: HandBundle) -> None:
    # Same tokenizer as training: lowercase, punctuation dropped, OOV words ("a", "scored") ignored.
    col = {w: j for j, w in enumerate(EN_VOCAB)}
    bow = np.zeros((len(EN_TEXTS), len(EN_VOCAB)), dtype=np.float32)
    import re

    for i, t in enumerate(EN_TEXTS):
        for w, c in Counter(re.findall(r"[^\W_]+", t.lower())).items():
            if w in col:
                bow[i, col[w]] = c
    assert bow[0, col["stock"]] == 2 and bow[0, col["the"]] == 2
    np.testing.assert_array_equal(model.bag_of_words(EN_TEXTS, "en"), bow)
    res = model.infer(EN_TEXTS, langs="en")
    np.testing.assert_allclose(res.theta, hb.numpy_theta(bow, "en"), atol=1e-5)


def test_order_and_batching_do_not_change_results(model: TopicModel) -> None:
    texts = [EN_TEXTS[0], ZH_TEXTS[0], EN_TEXTS[1], ZH_TEXTS[1], EN_TEXTS[2]]
    langs = ["en", "zh", "en", "zh", "en"]
    a = model.infer(texts, langs, batch_size=1)
    b = model.infer(texts, langs, batch_size=256)
    np.testing.assert_allclose(a.theta, b.theta, atol=1e-6)
    for i, (t, lang) in enumerate(zip(texts, langs, strict=True)):
        np.testing.assert_allclose(model.infer([t], lang).theta[0], b.theta[i], atol=1e-6)
    assert b.langs == langs


def test_languages_are_detected_among_the_bundles(model: TopicModel) -> None:
    res = model.infer([EN_TEXTS[3], ZH_TEXTS[1], EN_TEXTS[1]])
    assert res.langs == ["en", "zh", "en"]
    # Given codes are normalised (cn -> zh) and None entries detected.
    assert model.infer([ZH_TEXTS[0], EN_TEXTS[0]], ["cn", None]).langs == ["zh", "en"]


def test_unserved_language_names_it_and_the_served_ones(model: TopicModel) -> None:
    with pytest.raises(XtmError, match=r"'fr' is not served by this bundle \(it serves en, zh\)"):
        model.infer(["bonjour"], langs="fr")
    with pytest.raises(XtmError, match="invalid language code"):
        model.infer(["x"], langs=["not a code"])
    with pytest.raises(XtmError, match="2 entries for 1 texts"):
        model.infer(["x"], langs=["en", "en"])


def test_empty_documents_are_flagged_and_get_the_zero_bag_output(model: TopicModel, hb: HandBundle) -> None:
    res = model.infer(["", "zzz qqq !!!", EN_TEXTS[0], "   "], langs=[None, "en", "en", None])
    assert res.empty.tolist() == [True, True, False, True]
    # Blank texts have no language (they used to be reported as the bundle's first language); they
    # read as an empty bag of the first encoder, flagged empty.
    assert res.langs == [None, "en", "en", None] and res.routes == ["bow"] * 4
    assert not res.unsupported.any() and np.isnan(res.lang_conf).all()  # nothing was detected
    assert np.isnan(res.oov_ratio[[0, 3]]).all() and res.oov_ratio[1] == 1.0  # "zzz qqq": 2 tokens, none known
    zero = hb.numpy_theta(np.zeros((1, len(EN_VOCAB))), "en")[0]
    np.testing.assert_allclose(res.theta[0], zero, atol=1e-6)
    np.testing.assert_allclose(res.theta[1], zero, atol=1e-6)
    assert model.infer([]).theta.shape == (0, model.num_topics)


def test_infer_from_four_threads_is_identical(model: TopicModel) -> None:
    texts = (EN_TEXTS + ZH_TEXTS) * 40
    ref = model.infer(texts, batch_size=32)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: model.infer(texts, batch_size=32), range(8)))
    for r in results:
        np.testing.assert_array_equal(r.theta, ref.theta)
        assert r.langs == ref.langs and r.top_topics == ref.top_topics


def test_thread_count_is_settable_and_results_agree(hb: HandBundle, model: TopicModel) -> None:
    one = TopicModel.load(hb.path, threads=1, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(one.infer(EN_TEXTS).theta, model.infer(EN_TEXTS).theta, atol=1e-6)
    with pytest.raises(XtmError, match="not available"):
        TopicModel.load(hb.path, providers=["NoSuchExecutionProvider"])


def test_corrupted_file_fails_the_checksum_and_is_named(hb: HandBundle, tmp_path: Path) -> None:
    b = copy_bundle(hb, tmp_path)
    words = (b / "vocab_en.txt").read_text(encoding="utf-8").split("\n")
    words[0], words[1] = words[1], words[0]  # same size, different meaning: only a checksum sees it
    (b / "vocab_en.txt").write_text("\n".join(words), encoding="utf-8")
    with pytest.raises(XtmError, match=r"vocab_en\.txt: checksum mismatch"):
        TopicModel.load(b)
    # verify=False trusts the files (faster loads of big bundles).
    assert TopicModel.load(b, verify=False).vocabulary("en")[0] == EN_VOCAB[1]


def test_missing_file_is_named(hb: HandBundle, tmp_path: Path) -> None:
    b = copy_bundle(hb, tmp_path)
    (b / "encoder_zh.onnx").unlink()
    with pytest.raises(XtmError, match=r"encoder_zh\.onnx: missing from the bundle"):
        TopicModel.load(b)


def test_missing_manifest_and_wrong_format(hb: HandBundle, tmp_path: Path) -> None:
    with pytest.raises(XtmError, match="bundle directory not found"):
        read_manifest(tmp_path / "nowhere")
    b = copy_bundle(hb, tmp_path)
    edit_manifest(b, format="something-else")
    with pytest.raises(XtmError, match="not an xtm bundle"):
        read_manifest(b)
    (b / "manifest.json").unlink()
    with pytest.raises(XtmError, match=r"manifest\.json: no manifest\.json"):
        read_manifest(b)


def test_newer_schema_is_refused_with_upgrade_advice(hb: HandBundle, tmp_path: Path) -> None:
    b = copy_bundle(hb, tmp_path)
    edit_manifest(b, schema_version=4, xtm_version="9.1.0")
    # both versions said: "upgrade xtm" alone gave nothing to pin (a review)
    with pytest.raises(XtmError, match=r"bundle schema 4 is newer than this xtm \(reads 3\): upgrade xtm "
                                       rf"\(this is xtm {re.escape(xtm.__version__)}; the bundle was written by "
                                       r"xtm 9\.1\.0\)"):
        TopicModel.load(b)
    edit_manifest(b, xtm_version="\n" * 100)
    with pytest.raises(XtmError, match=r"upgrade xtm \(this is xtm .*; the bundle was written by an unknown xtm\)"):
        TopicModel.load(b)


def test_unknown_top_level_keys_are_ignored(hb: HandBundle, tmp_path: Path) -> None:
    b = copy_bundle(hb, tmp_path)
    edit_manifest(b, contextual_encoder={"file": "future.onnx", "kind": "any-language"}, note="from the future")
    assert TopicModel.load(b).languages == ["en", "zh"]


def test_manifest_cannot_point_outside_the_bundle(hb: HandBundle, tmp_path: Path) -> None:
    b = copy_bundle(hb, tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    m["encoders"]["en"]["vocab"] = "../vocab_en.txt"
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(XtmError, match="invalid bundle file name"):
        read_manifest(b)


def test_runtime_works_where_torch_cannot_be_imported(hb: HandBundle, tmp_path: Path) -> None:
    # A `torch` package that refuses to import, first on the path: any torch import in the runtime
    # (direct, or through xtm.trainer / xtm.models_zoo) fails this process.
    fake = tmp_path / "no_torch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("torch is blocked in this test")\n')
    script = textwrap.dedent(f"""
        import json, sys
        from xtm.runtime import TopicModel
        m = TopicModel.load({str(hb.path)!r})
        r = m.infer({EN_TEXTS[:2] + ZH_TEXTS[:1]!r})
        assert "torch" not in sys.modules
        print(json.dumps({{"langs": r.langs, "sums": r.theta.sum(axis=1).tolist()}}))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])}
    check = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert check.returncode != 0 and "torch is blocked" in check.stderr
    p = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["langs"] == ["en", "en", "zh"]
    assert np.allclose(out["sums"], 1.0, atol=1e-5)


# -- sparse encoders (bundle schema 2) ----------------------------------------------------------


def sparse_copy(hb: HandBundle, dst: Path, int8: bool = False) -> Path:
    """The hand bundle with its encoders rewritten to read word ids and counts, as xtm-export writes them."""
    from xtm.exporters.graph_rewrites import finish_encoder
    from xtm.runtime.bundle import sha256_file

    shutil.copytree(hb.path, dst)
    m = json.loads((dst / "manifest.json").read_text())
    for e in m["encoders"].values():
        assert finish_encoder(dst / e["file"], dst / e["file"], int8=int8)
        e.pop("input")
        e.update(input_format="sparse", inputs=["word_ids", "counts"])
        m["files"][e["file"]] = sha256_file(dst / e["file"])
    m["schema_version"] = 2
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


@pytest.fixture(scope="module")
def sparse_model(hb: HandBundle, tmp_path_factory: pytest.TempPathFactory) -> TopicModel:
    return TopicModel.load(sparse_copy(hb, tmp_path_factory.mktemp("sparse") / "b"))


def test_sparse_encoder_gives_the_numpy_theta(sparse_model: TopicModel, model: TopicModel, hb: HandBundle) -> None:
    texts = EN_TEXTS + ["stock stock stock market", "", "zzz"]
    res = sparse_model.infer(texts, langs="en")
    np.testing.assert_allclose(res.theta, hb.numpy_theta(model.bag_of_words(texts, "en"), "en"), atol=1e-5)
    assert res.empty.tolist() == [False] * len(EN_TEXTS) + [False, True, True]
    np.testing.assert_allclose(res.theta, model.infer(texts, langs="en").theta, atol=1e-6)   # the dense graph
    zh = sparse_model.infer(ZH_TEXTS, langs="zh")
    np.testing.assert_allclose(zh.theta, hb.numpy_theta(model.bag_of_words(ZH_TEXTS, "zh"), "zh"), atol=1e-5)


def test_sparse_batches_sorted_by_length_keep_input_order(sparse_model: TopicModel, hb: HandBundle) -> None:
    rng = np.random.default_rng(0)
    # Documents of 0 to 30 words: batches of 3 are cut from length-sorted windows of 24.
    texts = [" ".join(rng.choice(EN_VOCAB, size=rng.integers(0, 30))) for _ in range(100)]
    res = sparse_model.infer(texts, langs="en", batch_size=3)
    want = hb.numpy_theta(sparse_model.bag_of_words(texts, "en"), "en")
    np.testing.assert_allclose(res.theta, want, atol=1e-5)
    np.testing.assert_allclose(res.theta, sparse_model.infer(texts, langs="en", batch_size=256).theta, atol=1e-6)
    assert res.empty.tolist() == [not t for t in texts]
    assert res.top_ids.shape == (100, 3) and res.top_topics[7] == list(zip(res.top_ids[7].tolist(),
                                                                           res.top_weights[7].tolist(), strict=True))


def test_sparse_encoder_is_deterministic_across_threads(hb: HandBundle, tmp_path: Path) -> None:
    m = TopicModel.load(sparse_copy(hb, tmp_path / "b"), threads=2)
    texts = (EN_TEXTS + ZH_TEXTS) * 60
    ref = m.infer(texts, batch_size=64)
    with ThreadPoolExecutor(4) as pool:
        for r in pool.map(lambda _: m.infer(texts, batch_size=64), range(8)):
            np.testing.assert_array_equal(r.theta, ref.theta)


def test_int8_sparse_encoder_stays_close(hb: HandBundle, model: TopicModel, tmp_path: Path) -> None:
    q = TopicModel.load(sparse_copy(hb, tmp_path / "q", int8=True))
    import onnx

    names = {t.name for t in onnx.load(str(tmp_path / "q" / "encoder_en.onnx")).graph.initializer}
    assert "sparse_input_table_int8" in names and "sparse_input_table" not in names
    texts = EN_TEXTS * 3
    np.testing.assert_allclose(q.infer(texts, "en").theta, model.infer(texts, "en").theta, atol=0.02)


def test_bag_of_words_sparse_equals_dense(model: TopicModel) -> None:
    dense = model.bag_of_words(EN_TEXTS + [""], "en")
    csr = model.bag_of_words(EN_TEXTS + [""], "en", sparse=True)
    assert csr.shape == dense.shape and csr.dtype == np.float32
    np.testing.assert_array_equal(csr.toarray(), dense)


def test_an_encoder_fed_directly_with_public_bags_of_words_gives_infer_theta(sparse_model: TopicModel,
                                                                             model: TopicModel) -> None:
    """What the exporter's parity check and the benchmarks do, through public names only."""
    from xtm.runtime.bow import BagsOfWords

    texts = EN_TEXTS + ["", "stock stock zzz market"]
    for m in (sparse_model, model):
        bags = BagsOfWords.from_csr(m.bag_of_words(texts, "en", sparse=True))
        entry = m.manifest.encoders["en"]
        rows = np.arange(len(texts))
        feed = bags.padded(rows) if entry.sparse else (bags.dense(rows, entry.vocab_size),)
        theta = m.encoder_session("en").run([entry.output], dict(zip(entry.inputs, feed, strict=True)))[0]
        np.testing.assert_allclose(theta, m.infer(texts, langs="en").theta, atol=1e-6)
        assert bags.lengths()[-2] == 0 and bags.tokens[-1] == 3  # "zzz" is not a word of the vocabulary
        np.testing.assert_array_equal(bags.csr(entry.vocab_size).toarray(), m.bag_of_words(texts, "en"))


def test_unknown_input_format_asks_for_an_upgrade(hb: HandBundle, tmp_path: Path) -> None:
    b = copy_bundle(hb, tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    m["schema_version"] = 2
    m["encoders"]["en"]["input_format"] = "ragged"
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(XtmError, match="unknown input_format 'ragged'.*upgrade xtm"):
        TopicModel.load(b)


def test_jieba_piece_cache_gives_the_plain_jieba_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    import xtm.runtime.tokenize as T
    from xtm.corpus import TokenizerSpec

    jieba = T._get_jieba()
    texts = ZH_TEXTS + ["我爱北京天安门。\r\n今天天气不错！\t\tABC def 123", "　全角空格　测试\u3000ok",
                        "混合English和中文,with punctuation...!!", "C++ 与 C# 编程 3.14% a-b_c",
                        "分隔\x1c符号\x85下一行\u2028段落", "", "   ", "北京 经济 增长 北京 经济"]
    monkeypatch.setattr(T, "_JIEBA_CACHE_SIZE", 4)  # also exercises the clearing
    for spec in (TokenizerSpec(lang="zh", kind="jieba"),
                 TokenizerSpec(lang="zh", kind="jieba", lowercase=False, min_token_length=2)):
        tok = T.make_tokenizer(spec)
        for t in texts * 2:  # second round from the cache
            assert tok(t) == T._finish(jieba.lcut(t), spec.lowercase, spec.min_token_length), t


# ---- embedding the runtime in a pipeline (review of 2026-12-06) ----------------------------------


def test_texts_are_read_by_position_whatever_the_container(model: TopicModel) -> None:
    """A pandas Series left by a filter or a shuffle indexes by its labels, not 0..n-1: its rows must still
    be read in their order, with their own languages (it gave three rows of four another document's theta)."""
    pd = pytest.importorskip("pandas")
    texts, langs = EN_TEXTS[:3] + ZH_TEXTS[:1], ["en", "en", "en", "zh"]
    shuffled = pd.Series(texts, index=[3, 1, 0, 2])
    expected = model.infer(texts, langs)
    got = model.infer(shuffled, pd.Series(langs, index=[7, 5, 6, 4]))
    np.testing.assert_array_equal(got.theta, expected.theta)
    filtered = pd.Series(texts)[1:3]  # index 1, 2: there is no label 0
    np.testing.assert_array_equal(model.transform(filtered, "en"), model.transform(texts[1:3], "en"))
    np.testing.assert_array_equal(model.bag_of_words(filtered, "en"), model.bag_of_words(texts[1:3], "en"))


def test_unsupported_rows_list_no_topics_and_results_do_not_share_the_models_words(model: TopicModel) -> None:
    res = model.infer(["बाज़ार आज तेज़ी से गिर गया", EN_TEXTS[0]])
    assert res.unsupported.tolist() == [True, False]
    described = res.top_topics_with_words(3)
    assert described[0] == [] and len(described[1]) == 3  # not topic -1, the last topic, at NaN
    res.topic_words[0]["en"][:2] = ["EDITED", "EDITED"]  # a caller editing its result in place ...
    assert model.topics[0]["en"][:2] != ["EDITED", "EDITED"]  # ... edits nothing the next result shows
    assert model.infer(EN_TEXTS[:1]).topic_words[0]["en"][:2] != ["EDITED", "EDITED"]


@pytest.mark.parametrize("kwargs", [{"batch_size": 1.5}, {"batch_size": "2"}, {"top_k": -1}, {"top_k": True}])
def test_infer_arguments_that_are_not_whole_numbers_are_one_error(model: TopicModel, kwargs: dict) -> None:
    with pytest.raises(XtmError, match=f"{next(iter(kwargs))} must be a whole number"):
        model.infer(EN_TEXTS[:1], **kwargs)


@pytest.mark.parametrize("threads", [0, 2.5, "2"])
def test_load_threads_must_be_a_whole_number(hb: HandBundle, threads: object) -> None:
    with pytest.raises(XtmError, match="threads must be a whole number of at least 1"):
        TopicModel.load(hb.path, threads=threads)  # type: ignore[arg-type]


def test_load_threads_past_any_machine_are_refused(hb: HandBundle) -> None:
    """onnxruntime created threads until the process table was full (the machine's other processes could not
    fork)."""
    with pytest.raises(XtmError, match="threads must be at most 1024, got 100000"):
        TopicModel.load(hb.path, threads=100_000)


def test_a_file_read_after_loading_must_still_be_the_loaded_bundles(hb: HandBundle, tmp_path: Path) -> None:
    """beta is read on use: a bundle re-exported in place since the load (a redeploy) would give this object
    another model's topic words next to its own encoders; it is refused, naming the file."""
    bundle = copy_bundle(hb, tmp_path)
    loaded = TopicModel.load(bundle)
    beta = bundle / "beta_en.npy"
    arr = np.load(beta)
    np.save(beta, arr[::-1].copy())  # same shape and type, other values
    with pytest.raises(XtmError, match=r"beta_en.npy: checksum mismatch"):
        loaded.get_topic(0, "en")
    assert TopicModel.load(bundle, verify=False).topic_word_weights("en").shape == arr.shape  # asked not to check


def test_a_model_pickles_as_its_bundle_and_refuses_one_that_changed(hb: HandBundle, tmp_path: Path) -> None:
    import pickle

    bundle = copy_bundle(hb, tmp_path)
    model = TopicModel.load(bundle, threads=1)
    copy = pickle.loads(pickle.dumps(model))  # what multiprocessing, joblib and Ray do
    assert copy is not model and copy.languages == model.languages
    np.testing.assert_array_equal(copy.transform(EN_TEXTS), model.transform(EN_TEXTS))
    data = pickle.dumps(model)
    here = os.getcwd()
    try:  # loaded by a relative path, unpickled where the working directory is another (a Ray actor's)
        os.chdir(bundle.parent)
        relative = pickle.dumps(TopicModel.load(bundle.name))
        os.chdir(tmp_path.parent)
        assert pickle.loads(relative).languages == model.languages
    finally:
        os.chdir(here)
    edit_manifest(bundle, model="changed")
    with pytest.raises(XtmError, match="the bundle changed since this TopicModel was pickled"):
        pickle.loads(data)
    # xtm-infer's worker processes go through the same check (TopicModel.load_unchanged), with their own words.
    with pytest.raises(XtmError, match="the bundle changed since xtm-infer loaded it .*: run it again"):
        TopicModel.load_unchanged(bundle, model.manifest_sha256, since="xtm-infer loaded it", advice="run it again")
