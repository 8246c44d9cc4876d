"""xtm-example: write the built-in bilingual example (xtm.examples) for the README's demo and tests."""

from __future__ import annotations

import click

from xtm.cli.common import friendly_errors, setup_logging, version_option
from xtm.examples import CATEGORIES

EPILOG = """\b
Examples:
  xtm-example demo                      # demo/docs.jsonl, dict.tsv, ref_en_zh/, ...
  xtm-example small --docs-per-lang 60 --seed 1

\b
Writes 600 English and 600 Chinese synthetic news documents (six categories,
labels and a train/test split), short fr/de/es/ja documents for zero-shot
inference, a partial zh-en dictionary and an aligned reference corpus for
CNPMI. No network; the same seed gives the same bytes. OUT_DIR/README.txt
describes the files.
"""


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--docs-per-lang", type=click.IntRange(len(CATEGORIES)), default=600, show_default=True,
              help="Documents per training language (at least one per category).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same bytes).")
@version_option("xtm-example")
@friendly_errors
def main(out_dir: str, docs_per_lang: int, seed: int) -> None:
    """Write the built-in example corpus into OUT_DIR (created if missing)."""
    setup_logging("xtm-example")
    from xtm.examples import describe_written, write_example

    for line in describe_written(write_example(out_dir, docs_per_lang=docs_per_lang, seed=seed)):
        click.echo(line)


if __name__ == "__main__":
    main()
