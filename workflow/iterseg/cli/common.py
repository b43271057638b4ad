"""What the command modules share: how a sub-command is registered, and how a handler reads its inputs."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from iterseg.records import Record, read_record

R = TypeVar("R", bound=Record)

Handler = Callable[[argparse.Namespace], None]


def add_command(
    sub: argparse._SubParsersAction, name: str, func: Handler, help_text: str
) -> argparse.ArgumentParser:
    """Add sub-command ``name``, handled by ``func``; ``help_text`` is its ``--help`` description.

    The one-line help is not given to argparse: ``iterseg --help`` lists the commands itself,
    in groups (see :func:`iterseg.cli.app.build_parser`), from each parser's description.
    """
    parser: argparse.ArgumentParser = sub.add_parser(name, description=help_text)
    parser.set_defaults(func=func)
    return parser


def optional_record(path: str | None, kind: type[R]) -> R | None:
    """The record of type ``kind`` at ``path`` (a command-line value), or None when not given."""
    return read_record(Path(path), kind) if path else None
