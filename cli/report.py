"""xtm-report: (re)write a run's report.html from its files, or an inference report of a scored
corpus; no torch, no model, no network."""

from __future__ import annotations

from pathlib import Path

import click

from xtm.cli.common import friendly_errors, require_modules, setup_logging, version_option

EPILOG = """\b
Examples:
  xtm-report runs/demo                       # writes runs/demo/report.html
  xtm-report runs/demo --out /tmp/demo.html
  xtm-infer docs.jsonl --bundle bundles/demo --out theta.jsonl
  xtm-report --theta theta.jsonl --bundle bundles/demo   # writes theta.jsonl.report.html

\b
The run report is self-contained (inline CSS, SVG and a few lines of JS; nothing is
fetched): warnings on near-empty and duplicate topics, the metrics next to published
numbers for known benchmarks with a glossary, loss curves and evaluation curves
(--eval-every), topic prevalence, a map of the topics, with aligned documents
(--ref-corpus) how often a pair gets the same top topic in both languages, each
topic's label and words in every language side by side with its size, TU and CNPMI,
phase 2's refined sets with what changed, and per topic its word weights (bars) and
its most representative training documents. xtm-train writes it at the end of every
run; this command renders it again (after xtm-label, with the new labels).

\b
The inference report (--theta, xtm-infer's JSONL output, with the --bundle that scored
it) shows how many documents each language has, how many were empty or took the
contextual route, and every topic's prevalence per language with its label and words.
"""


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run_dir", type=click.Path(file_okay=False), required=False)
@click.option("--out", type=click.Path(dir_okay=False),
              help="HTML file to write (default: RUN_DIR/report.html; with --theta: THETA.report.html).")
@click.option("--theta", type=click.Path(dir_okay=False, exists=True),
              help="Inference report of this xtm-infer JSONL output (needs --bundle).")
@click.option("--bundle", type=click.Path(file_okay=False, exists=True),
              help="The bundle that scored --theta (its topics' words and labels).")
@version_option("xtm-report")
@friendly_errors
def main(run_dir: str | None, out: str | None, theta: str | None, bundle: str | None) -> None:
    """Write the HTML report of RUN_DIR (a directory written by xtm-train), or with --theta and
    --bundle the inference report of a scored corpus."""
    setup_logging("xtm-report")
    from xtm.errors import XtmError

    # No torch needed, but both reports read the metrics module, which needs scipy (not in the runtime-only install).
    require_modules("xtm-report", 'pip install "xtm[report]"', imported=("scipy",))
    if theta is not None or bundle is not None:
        if theta is None or bundle is None or run_dir is not None:
            raise XtmError("the inference report takes --theta THETA.jsonl and --bundle BUNDLE, without RUN_DIR")
        from xtm.evaluation.report_theta import write_theta_report

        target = Path(out) if out is not None else Path(theta + ".report.html")
        refuse_foreign_file(target, given=out is not None)
        click.echo(str(write_theta_report(theta, bundle, target)))
        return
    if run_dir is None:
        raise XtmError("give RUN_DIR (a run's report) or --theta and --bundle (an inference report)")
    from xtm.evaluation.report import write_report_html

    if out is not None:
        refuse_foreign_file(Path(out), given=True)
    click.echo(str(write_report_html(run_dir, out)))


def refuse_foreign_file(path: Path, *, given: bool) -> None:
    """An existing output is replaced only when it is empty or a report this command wrote (a run's
    or an inference report): `--out thesis.docx`, or `--out` naming the --theta input, is refused
    before anything is read, by the rule xtm-infer's --out follows (`xtm.atomic.check_replaceable`)."""
    from xtm.atomic import check_replaceable

    check_replaceable(path, _is_report, what="an xtm report",
                      hint="choose another --out" if given else "choose the file with --out")


def _is_report(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(4096)
    return head.startswith(b"<!DOCTYPE html>") and (b"xtm inference report" in head or b"<title>xtm run " in head)


if __name__ == "__main__":
    main()
