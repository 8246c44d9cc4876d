"""xtm-label: a short human label for every topic of a finished run, in every language."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from xtm.cli.common import friendly_errors, require_modules, setup_logging, version_option
from xtm.cli.options import SectionedCommand, build, options
from xtm.config import LabelConfig

EPILOG = """\b
Examples:
  xtm-label runs/demo                       # LLM-free: each topic's best-connected top words
  xtm-label runs/demo --refiner openai --llm-url http://127.0.0.1:8000/v1 \\
            --llm-model Qwen/Qwen2.5-7B-Instruct     # any OpenAI-compatible server
  xtm-label runs/demo --refiner transformers --llm-model ./SmolLM2-135M-Instruct

\b
Writes RUN_DIR/labels.json and renders RUN_DIR/report.html again with the labels;
xtm-export puts them into the bundle (topics.json), so every xtm-infer line and
TopicModel.topic_info() carry them. xtm-train already labels every run when it ends
(with phase 2's LLM when it has one, else without an LLM): run this to label again,
with an LLM. An LLM answer that is not a label (empty, an essay, markup, the wrong
language) gets the LLM-free label instead. Answers are cached (--cache-dir, in
llm-answers/): a rerun makes no new request. The API key comes from
the variable --llm-api-key-env names, never from the command line. See docs/labels.md.

\b
Exit codes: 0 labelled; 2 bad input or settings, an LLM server that refuses the
requests (HTTP 401/403/404: wrong URL path, model or key), or one that answers none
of them (nothing listens at --llm-url, the server is down): one `error:` line, and
labels.json is left as it was.
"""


@click.command(cls=SectionedCommand, epilog=EPILOG,
               context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@options(LabelConfig, "Labels")
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="Cache of LLM answers, in llm-answers/ (default: $XTM_CACHE_DIR, else $XDG_CACHE_HOME/xtm, "
                   "else ~/.cache/xtm).")
@click.option("--no-report", is_flag=True, help="Do not render RUN_DIR/report.html again.")
@version_option("xtm-label")
@friendly_errors
def main(run_dir: str, cache_dir: str | None, no_report: bool, **parsed: Any) -> None:
    """Label every topic of RUN_DIR (written by xtm-train) in every language."""
    setup_logging("xtm-label")
    cfg = build(LabelConfig, parsed)
    # The fallback reads the run's parity sample (scipy); the LLM clients are the standard library.
    require_modules("xtm-label", 'pip install "xtm[report]"', imported=("scipy",))
    from xtm.errors import XtmError
    from xtm.paths import cache_dir as default_cache_dir
    from xtm.run_dir import hold_run_dir, is_run_dir
    from xtm.signals import exit_on_signals
    from xtm.trainer.labels import label_run

    path = Path(run_dir)
    if not is_run_dir(path):
        raise XtmError("not a training run directory: run xtm-train first", path=run_dir)
    with exit_on_signals(), hold_run_dir(path, "xtm-label"):
        labels = label_run(path, cfg, cache_dir=Path(cache_dir) if cache_dir else default_cache_dir())
        if not no_report:
            render_report(path)
    click.echo(json.dumps({"generator": labels.generator, "stats": labels.stats,
                           "labels": [dict(row) for row in labels.labels]}, indent=1, ensure_ascii=False))


def render_report(run_dir: Path) -> None:
    """report.html again, now with the labels: a failure is a warning (the labels are written)."""
    from xtm.evaluation.report import write_report_html

    try:
        click.echo(f"xtm-label: wrote {write_report_html(run_dir)}", err=True)
    except Exception as e:  # noqa: BLE001 - the report is a view; labels.json is what this command writes
        click.echo(f"xtm-label: warning: report.html was not written ({type(e).__name__}: {e})", err=True)


if __name__ == "__main__":
    main()
