"""Command-line options made from the configuration tree (xtm.config), and configs made from parsed options.

A setting declares its default, help text, type and valid range once, in xtm.config; `options(cls, title)`
turns every setting of `cls` that has a `Cli` declaration into a click option, and `build(cls, options)`
turns the parsed values back into a `cls` (switches, comma lists and KEY=VALUE pairs converted as declared).
A command using `SectionedCommand` lists its options under one heading per part of the configuration.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import MISSING, Field, fields
from typing import Any, TypeVar

import click

from xtm.config import Cli

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C")

__all__ = ["FiniteFloat", "SectionedCommand", "build", "given", "options", "settings"]


class SectionOption(click.Option):
    """A click option that knows which part of the configuration it sets (its heading in --help)."""

    def __init__(self, *args: Any, section: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.section = section


class SectionedCommand(click.Command):
    """--help lists the options under one heading per part of the configuration, in declaration order."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None and not isinstance(param, click.Argument):  # (the usage line names those)
                sections.setdefault(getattr(param, "section", "Options"), []).append(record)
        for title, records in sections.items():
            with formatter.section(title):
                formatter.write_dl(records)


def _default(f: Field) -> Any:
    if f.default_factory is not MISSING:
        return f.default_factory()
    return f.default


class FiniteFloat(click.FloatRange):
    """A number option that refuses NaN and the infinities: click's ranges let NaN through (every
    comparison with it is false), and `--lr nan` trained a model of NaNs that exited 0."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def _click_type(spec: Cli, default: Any) -> Any:
    if spec.choices is not None:
        return click.Choice(spec.choices, case_sensitive=spec.case_sensitive)
    if spec.path is not None:
        return click.Path(exists=spec.exists, file_okay=spec.path != "dir", dir_okay=spec.path != "file")
    kind = spec.type or type(default)
    if kind is float:
        return FiniteFloat(spec.min, spec.max, min_open=spec.min_open, max_open=spec.max_open)
    if spec.min is not None or spec.max is not None:
        return click.IntRange(spec.min, spec.max, min_open=spec.min_open, max_open=spec.max_open)
    return kind


def _option(f: Field, spec: Cli, section: str) -> Callable[[F], F]:
    default = _default(f)
    kwargs: dict[str, Any] = {"help": spec.help or f.metadata["help"], "cls": SectionOption, "section": section}
    if spec.required:
        kwargs["required"] = True
    if spec.metavar:
        kwargs["metavar"] = spec.metavar
    flags = spec.flags.split()
    if spec.off is not None:  # a yes/no pair, "--full-theta/--sparse-theta": the value is the setting's
        flags[-1] = f"{flags[-1]}/{spec.off}"
        kwargs.update(is_flag=True, default=default, show_default=True)
    elif spec.switch is not None:
        kwargs["is_flag"] = True  # present: the setting becomes `spec.switch` (see `settings`)
    elif spec.multiple:
        kwargs["multiple"] = True
    else:
        kwargs["type"] = _click_type(spec, default)
        # (a parsed option's default is the setting's, not a value of the option: --stopwords FILE's is no words)
        if default is not MISSING and default is not None and spec.parse is None:
            kwargs.update(default=default, show_default=True)
    return click.option(*flags, spec.name, **kwargs)


def options(cls: type, section: str) -> Callable[[F], F]:
    """Decorator: a click option for every setting of `cls` with a command-line form, listed under `section`."""
    declared = [(f, f.metadata.get("cli")) for f in fields(cls)]

    def decorate(fn: F) -> F:
        for f, spec in reversed(declared):  # click lists stacked decorators top-down
            if spec is not None:
                fn = _option(f, spec, section)(fn)
        return fn

    return decorate


def settings(cls: type, parsed: dict[str, Any]) -> dict[str, Any]:
    """The values the command line gives `cls`'s settings (an absent switch leaves its default)."""
    out: dict[str, Any] = {}
    for f in fields(cls):
        spec: Cli | None = f.metadata.get("cli")
        if spec is None or spec.name not in parsed:
            continue
        value = parsed[spec.name]
        if spec.switch is not None:
            if value:
                value = spec.switch
            elif spec.tty:
                value = sys.stderr.isatty()  # progress only where someone watches
            else:
                continue
        elif spec.parse is not None:
            value = spec.parse(value)
        out[f.name] = value
    return out


def given(cls: type, ctx: click.Context) -> set[str]:
    """The settings of `cls` whose option the command line (or an environment variable) gave, not its default."""
    from click.core import ParameterSource

    out = set()
    for f in fields(cls):
        spec: Cli | None = f.metadata.get("cli")
        if spec is not None and ctx.get_parameter_source(spec.name) not in (None, ParameterSource.DEFAULT):
            out.add(f.name)
    return out


def build(cls: type[C], parsed: dict[str, Any], **derived: Any) -> C:
    """A `cls` from parsed options, plus the values derived from other settings (`derived` wins)."""
    return cls(**{**settings(cls, parsed), **derived})
