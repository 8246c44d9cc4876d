"""Issue 16: looking at a loaded model's topics from Python (get_topic, topic_info, transform),
progress for long lists, and XtmError as the ValueError it is."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from bundle_fixture import HandBundle, make_bundle

from xtm.errors import XtmError
from xtm.runtime import TopicModel

EN = ["The stock market and the bank price fell", "The team scored a goal in the football match",
      "The doctor said the virus reached the hospital"]
ZH = ["股票市场价格下跌", "球队在足球比赛中进球"]


@pytest.fixture(scope="module")
def hb(tmp_path_factory: pytest.TempPathFactory) -> HandBundle:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "b")


@pytest.fixture(scope="module")
def model(hb: HandBundle) -> TopicModel:
    return TopicModel.load(hb.path)


def test_topic_word_distribution_is_softmax_of_beta_with_rows_summing_to_one(model: TopicModel) -> None:
    for lang in model.languages:
        beta = model.topic_word_weights(lang).astype(np.float64)
        dist = model.topic_word_distribution(lang)
        assert dist.shape == beta.shape and dist.dtype == np.float32
        np.testing.assert_allclose(dist.sum(axis=1), 1.0, atol=1e-5)
        expected = np.exp(beta - beta.max(axis=1, keepdims=True))
        np.testing.assert_allclose(dist, expected / expected.sum(axis=1, keepdims=True), rtol=1e-5)
        assert not dist.flags.writeable  # shared between calls: nobody edits it in place


def test_get_topic_gives_the_top_words_with_normalised_weights(model: TopicModel) -> None:
    for k in range(model.num_topics):
        for lang in model.languages:
            pairs = model.get_topic(k, lang, n=15)
            words, weights = [w for w, _ in pairs], [w for _, w in pairs]
            assert words == model.topics[k][lang]  # the bundle's top words, in the same order
            assert weights == sorted(weights, reverse=True) and all(0 < w < 1 for w in weights)
            assert all(isinstance(w, float) for w in weights)
    full = model.get_topic(0, "cn", n=10_000)  # an alias of a served language; n past the vocabulary
    assert len(full) == len(model.vocabulary("zh")) and abs(sum(w for _, w in full) - 1) < 1e-4


@pytest.mark.parametrize(("args", "needle"), [((99, "en"), "topic must be an integer in 0..5"),
                                              ((-1, "en"), "topic must be an integer"),
                                              ((True, "en"), "topic must be an integer"),
                                              ((0, "fr"), "language 'fr' is not served"),
                                              ((0, "en", 0), "n must be a whole number of at least 1")])
def test_get_topic_refuses_what_is_not_a_topic(model: TopicModel, args: tuple, needle: str) -> None:
    with pytest.raises(XtmError, match=needle):
        model.get_topic(*args)


def test_topic_info_without_documents_lists_words_per_language(model: TopicModel) -> None:
    info = model.topic_info(n_words=3)
    assert [row["id"] for row in info] == list(range(model.num_topics))
    for row, t in zip(info, model.topics, strict=True):
        assert set(row) == {"id", "words_en", "words_zh"}
        assert row["words_en"] == t["en"][:3] and row["words_zh"] == t["zh"][:3]


def test_topic_info_with_documents_counts_each_languages_top_topics(model: TopicModel) -> None:
    texts = EN + ZH + ["", "12345 !!!"]  # a blank text (empty) and one without a language (unsupported)
    info = model.topic_info(texts)
    res = model.infer(texts)
    for lang, docs in (("en", EN), ("zh", ZH)):
        counts = [row[f"count_{lang}"] for row in info]
        assert sum(counts) == len(docs)
        expected = np.bincount(res.top_ids[[i for i, t in enumerate(texts) if t in docs], 0],
                               minlength=model.num_topics)
        assert counts == expected.tolist()
        np.testing.assert_allclose([row[f"size_{lang}"] for row in info], expected / len(docs))
    json.dumps(info)  # plain Python values: JSON, pandas, a spreadsheet


def test_transform_is_theta_in_input_order(model: TopicModel) -> None:
    theta = model.transform(EN + ZH)
    assert theta.shape == (5, model.num_topics) and theta.dtype == np.float32
    np.testing.assert_array_equal(theta, model.infer(EN + ZH).theta)
    np.testing.assert_array_equal(model.transform(EN, langs="en", batch_size=1), model.infer(EN, "en").theta)


def test_show_progress_bar_draws_on_stderr_only_when_asked(hb: HandBundle) -> None:
    code = ("from xtm.runtime import TopicModel\n"
            f"m = TopicModel.load({str(hb.path)!r})\n"
            "texts = ['the stock market'] * 3000\n"
            "a = m.infer(texts, 'en', show_progress_bar=True).theta\n"
            "import sys; sys.stderr.write('|MARK|')\n"
            "b = m.infer(texts, 'en').theta\n"
            "print((a == b).all())\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "True"
    before, after = p.stderr.split("|MARK|")
    assert "3000/3000" in before and "docs" in before
    assert after == ""


def test_xtm_error_is_a_value_error() -> None:
    assert issubclass(XtmError, ValueError)
    e = XtmError("bad value", path="docs.jsonl", line=3, field="text")
    assert str(e) == "docs.jsonl:3: field 'text': bad value"
    try:
        TopicModel.load("/nonexistent/bundle")
    except ValueError as caught:  # what a caller handling bad values catches
        assert isinstance(caught, XtmError)
    else:  # pragma: no cover
        pytest.fail("no error")


def test_a_bundle_for_one_language_has_topic_info_for_that_language(tmp_path) -> None:
    b = make_bundle(tmp_path / "en", vocabs={"en": ["market", "stock", "team", "goal"]}, num_topics=2)
    m = TopicModel.load(b.path)
    info = m.topic_info(["the market and the stock", "the team and the goal"], langs="en")
    assert [set(row) for row in info] == [{"id", "words_en", "count_en", "size_en"}] * 2
    assert sum(row["count_en"] for row in info) == 2


@pytest.mark.parametrize(("texts", "needle"), [
    (None, "texts must be a list of strings, got NoneType"),
    ({"a": "The stock market"}, "texts must be a list of strings, got dict"),  # was: its keys, read as texts
    ({"The stock market"}, "got set"),
    (b"The stock market", "got bytes"),
    ("The stock market", "not one string"),
    (np.array([EN, EN]), "got ndarray"),  # was: its rows
    (5, "got int"),
    ([EN[0], 5], r"texts\[1\] must be a string, got int"),
])
def test_texts_that_are_not_a_list_of_strings_are_one_error_in_every_method(model: TopicModel, texts, needle) -> None:
    """Before: infer read a DataFrame as its column names and a dict as its keys, without a word; None and an
    int were TypeErrors, and resolve_languages / bag_of_words split one string into its characters."""
    for call in (model.infer, model.transform, model.resolve_languages, model.resolve_routes,
                 lambda t: model.bag_of_words(t, "en")):
        with pytest.raises(XtmError, match=needle):
            call(texts)


def test_a_dataframe_is_refused_with_the_column_to_pass_and_a_series_is_read_by_position(model: TopicModel) -> None:
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"text": EN, "id": range(len(EN))})
    with pytest.raises(XtmError, match=r"got DataFrame \(pass the column: df\['text'\]\)"):
        model.infer(df, "en")
    series = df["text"].iloc[::-1]  # labels no longer 0..n-1
    assert np.array_equal(model.infer(series, "en").theta, model.infer(list(reversed(EN)), "en").theta)


@pytest.mark.parametrize(("langs", "needle"), [({"en": 1}, "got dict"), (5, "got int"), ({"en"}, "got set")])
def test_langs_that_are_not_codes_are_one_error(model: TopicModel, langs, needle) -> None:
    with pytest.raises(XtmError, match=f"langs must be one language code, .*{needle}"):
        model.infer(EN, langs)


def test_counts_take_numpy_integers_and_topic_info_says_top_k_is_not_its_option(model: TopicModel) -> None:
    assert len(model.get_topic(0, "en", n=np.int64(3))) == 3
    assert len(model.topic_info(n_words=np.int64(2))[0]["words_en"]) == 2
    with pytest.raises(XtmError, match="top_k is not one of its options"):
        model.topic_info(EN, "en", top_k=3)


def test_numpy_ids_are_written_as_their_numbers_not_skipped(model: TopicModel) -> None:
    """Before: an id from a numpy column (np.int64) could not be written as JSON and every record was skipped
    with a warning: a batch job over a DataFrame gave nothing."""
    records = [{"id": i, "text": t, "lang": "en"} for i, t in zip(np.arange(2), EN[:2], strict=False)]
    out = list(model.infer_records(records))
    assert len(out) == 2 and [json.loads(line)["id"] for line in out] == [0, 1], out
    from xtm.json_files import json_default

    assert json.dumps({"a": np.float32(0.5), "b": np.bool_(True), "c": np.str_("x")}, default=json_default) \
        == '{"a": 0.5, "b": true, "c": "x"}'
    with pytest.raises(TypeError, match="datetime64"):
        json.dumps(np.datetime64("2026-01-01"), default=json_default)


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"bundle_dir": None}, "bundle_dir must be a path .*got NoneType"),
    ({"bundle_dir": b"bundle"}, "bundle_dir must be a path .*got bytes"),
    ({"providers": 5}, "providers: expected 'cuda,cpu' or a list of provider names, got int"),
])
def test_load_arguments_of_the_wrong_type_are_one_error(hb: HandBundle, kwargs: dict, needle: str) -> None:
    with pytest.raises(XtmError, match=needle):
        TopicModel.load(**{"bundle_dir": hb.path, **kwargs})


def test_mapping_views_series_with_missing_languages_and_numpy_nan_ids(model: TopicModel) -> None:
    """dict.keys() is ordered text (accepted as before); a pandas column's NaN language is one to detect; a
    np.float32 NaN id is written as "NaN" like a float one; a DataFrame given as records is refused up front."""
    texts = dict.fromkeys(EN)
    assert model.infer(texts.keys(), "en").theta.shape == (len(EN), model.num_topics)
    assert model.resolve_routes(EN[:2], ["en", np.nan])[0] == ["en", "en"]
    out = list(model.infer_records([{"id": np.float32("nan"), "text": EN[0], "lang": "en"}]))
    assert json.loads(out[0])["id"] == "NaN"
    pd = pytest.importorskip("pandas")
    with pytest.raises(XtmError, match=r"records must be an iterable of mappings, got DataFrame"):
        model.infer_records(pd.DataFrame({"text": EN}))


def test_n_words_past_the_bundles_fifteen_gives_that_many(model: TopicModel) -> None:
    # topic_info(n_words=50) gave the bundle's 15 words while get_topic(k, lang, 50) gave 50.
    info = model.topic_info(n_words=40)
    for k, row in enumerate(info):
        for lang in model.languages:
            assert row[f"words_{lang}"] == [w for w, _ in model.get_topic(k, lang, 40)]
            assert row[f"words_{lang}"][:15] == model.topics[k][lang]


def test_results_compare_by_identity_and_the_model_is_a_pipeline_step(model: TopicModel) -> None:
    """InferenceResult's generated == raised ('truth value of an array is ambiguous') and hash() a TypeError; the
    transform docstring promised a Pipeline step, which sklearn refused (no fit)."""
    a, b = model.infer(EN, langs="en"), model.infer(EN, langs="en")
    assert a != b and a == a and len({a, b}) == 2
    # (a summary, not every array: the generated repr of 10,000 documents was 193 KB in a notebook cell)
    assert repr(a) == "InferenceResult(documents=3, topics=6, routes={'bow': 3}, empty=0, unsupported=0)"
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    pipe = make_pipeline(model, LogisticRegression()).fit(EN * 4, [0, 1, 2] * 4)
    assert pipe.predict(EN).shape == (3,) and pipe[0] is model  # (the hand-made topics need not separate them)
    assert model.fit(EN) is model


def test_the_model_class_is_at_the_top_and_sparse_bags_say_what_they_need(model: TopicModel,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import xtm

    assert xtm.TopicModel is TopicModel and "TopicModel" in xtm.__all__
    monkeypatch.setitem(sys.modules, "scipy.sparse", None)  # a runtime-only install: no scipy
    with pytest.raises(XtmError, match="sparse bags of words need scipy"):
        model.bag_of_words(EN, "en", sparse=True)
