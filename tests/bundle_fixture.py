"""A hand-made bundle in the exporter's format (schema 1: dense encoders), for runtime tests
independent of xtm-export.

Each language's encoder is a tiny torch module, softmax(bow @ W + b), exported to ONNX, so the
tests can recompute theta with numpy. The files are made here; topics.json and manifest.json are
written by the bundle format's own writer (xtm.runtime.bundle_write), as xtm-export writes them.
Replace `make_bundle` with the real exporter when wanted: callers only need `.path`, `.vocabs`
and (for the numpy check) `.weights`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xtm.runtime.bundle import EncoderEntry
from xtm.runtime.bundle_write import SourceRun, write_manifest, write_topics

EN_VOCAB = ["economy", "market", "stock", "bank", "price", "trade", "growth", "money", "football", "match",
            "team", "goal", "player", "season", "coach", "league", "music", "film", "actor", "song", "album",
            "movie", "star", "show", "science", "space", "research", "planet", "data", "study", "health",
            "doctor", "hospital", "virus", "patient", "the", "new", "world", "china", "president"]
ZH_VOCAB = ["经济", "市场", "股票", "银行", "价格", "贸易", "增长", "足球", "比赛", "球队", "进球", "球员",
            "音乐", "电影", "演员", "歌曲", "科学", "太空", "研究", "数据", "健康", "医生", "医院", "病毒",
            "北京", "中国", "美国", "总统", "世界", "新闻"]


# An earlier xtm-infer result line: what an --out file must begin with to be replaced (xtm-infer replaces
# only its own outputs; tests/test_infer_hostile.py checks that another file is refused).
PREVIOUS_OUTPUT = ('{"id": "old", "lang": "en", "lang_conf": 1.0, "route": "bow", "empty": false, "oov_ratio": 0.0, '
                   '"topics": []}\n')


@dataclass
class HandBundle:
    path: Path
    vocabs: dict[str, list[str]]
    weights: dict[str, tuple[np.ndarray, np.ndarray]]  # lang -> (W [V, K], b [K])
    num_topics: int

    def numpy_theta(self, bow: np.ndarray, lang: str) -> np.ndarray:
        """The encoder's forward pass in numpy (float64), for checking the runtime's output."""
        W, b = self.weights[lang]
        z = bow.astype(np.float64) @ W.astype(np.float64) + b.astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


def make_bundle(out_dir: str | Path, *, vocabs: dict[str, list[str]] | None = None, num_topics: int = 6,
                seed: int = 0, top_n: int = 15) -> HandBundle:
    """Write a schema-1 bundle to `out_dir` (created) with one Linear+softmax encoder per language."""
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocabs = vocabs or {"en": EN_VOCAB, "zh": ZH_VOCAB}
    K = num_topics
    rng = np.random.default_rng(seed)
    weights: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    encoders: list[EncoderEntry] = []
    topic_words: dict[str, list[list[str]]] = {}
    for lang, vocab in vocabs.items():
        V = len(vocab)
        W = rng.normal(0.0, 1.0, size=(V, K)).astype(np.float32)
        b = rng.normal(0.0, 0.5, size=K).astype(np.float32)
        weights[lang] = (W, b)

        m = torch.nn.Sequential(torch.nn.Linear(V, K), torch.nn.Softmax(dim=-1)).eval()
        with torch.no_grad():
            m[0].weight.copy_(torch.from_numpy(W.T.copy()))
            m[0].bias.copy_(torch.from_numpy(b))
        onnx_name = f"encoder_{lang}.onnx"
        with warnings.catch_warnings():
            # torch 2.13 warns that the TorchScript exporter is legacy; it is the one that needs
            # no onnxscript and gives exactly the dynamic-batch graph the runtime expects.
            warnings.simplefilter("ignore")
            torch.onnx.export(m, (torch.zeros(2, V),), str(out / onnx_name), input_names=["bow"],
                              output_names=["theta"], dynamic_axes={"bow": {0: "n"}, "theta": {0: "n"}},
                              opset_version=18, dynamo=False)
        (out / f"vocab_{lang}.txt").write_text("".join(w + "\n" for w in vocab), encoding="utf-8")
        beta = rng.dirichlet(np.ones(V), size=K).astype(np.float32)
        np.save(out / f"beta_{lang}.npy", beta, allow_pickle=False)
        topic_words[lang] = [[vocab[j] for j in np.argsort(-beta[k])[:top_n]] for k in range(K)]
        kind = {"zh": "jieba", "ja": "janome", "ko": "kiwi"}.get(lang, "regex")
        encoders.append(EncoderEntry(lang=lang, file=onnx_name, inputs=("bow",), output="theta",
                                     vocab=f"vocab_{lang}.txt", vocab_size=V, beta=f"beta_{lang}.npy",
                                     tokenizer={"lang": lang, "kind": kind, "lowercase": True,
                                                "min_token_length": 1}))
    write_topics(out, topic_words, top_n)
    write_manifest(out, model="infoctm", num_topics=K, languages=list(vocabs), encoders=encoders, opset=18,
                   quantization=None, source_run=SourceRun(name="bundle_fixture"), parity={})
    return HandBundle(path=out, vocabs={k: list(v) for k, v in vocabs.items()}, weights=weights, num_topics=K)
