"""xtm-infer: not implemented yet (see the project's issues)."""

from __future__ import annotations

import sys

import click


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                 "help_option_names": ["-h", "--help"]})
def main() -> None:
    """Not implemented yet: arrives with the ONNX export and runtime work."""
    click.echo("xtm-infer: not implemented yet", err=True)
    sys.exit(2)
