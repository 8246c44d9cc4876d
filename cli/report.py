"""xtm-report: (re)write a run's report.html from its files; no torch, no model, no network."""

from __future__ import annotations

import click

from xtm.cli.common import friendly_errors, require_modules, setup_logging, version_option

EPILOG = """\b
Examples:
  xtm-report runs/demo                       # writes runs/demo/report.html
  xtm-report runs/demo --out /tmp/demo.html

\b
The page is self-contained (inline CSS, SVG and a few lines of JS; nothing is fetched):
each topic's words in every language side by side with its size, TU and CNPMI, phase 2's
refined sets with what changed, the metrics next to published numbers for known benchmarks,
loss curves, topic prevalence, a map of the topics and, with aligned documents
(--ref-corpus), how often a pair gets the same top topic in both languages.
xtm-train writes it at the end of every run; this command renders it again.
"""


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), help="HTML file to write (default: RUN_DIR/report.html).")
@version_option("xtm-report")
@friendly_errors
def main(run_dir: str, out: str | None) -> None:
    """Write the HTML report of RUN_DIR (a directory written by xtm-train)."""
    setup_logging("xtm-report")
    # No torch needed, but the metrics module reads scipy (not in the runtime-only install).
    require_modules("xtm-report", 'pip install "xtm[report]"', imported=("scipy",))
    from xtm.evaluation.report import write_report_html

    click.echo(str(write_report_html(run_dir, out)))


if __name__ == "__main__":
    main()
