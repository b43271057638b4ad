"""The JSON records steps pass to each other, one frozen dataclass each, read and written here.

Every record goes through :func:`write_record` / :func:`read_record` (or :func:`write_json` /
:func:`read_json` for a plain list or mapping): strict JSON (``NaN`` and infinities are written
as ``null``, never as the non-standard tokens Python's ``json`` emits by default), written to a
temporary file beside the target and renamed into place, so a reader never sees half a record.

A record type is a frozen dataclass with ``to_json()`` (a JSON-ready value) and a
``from_json(data)`` classmethod; the sections below group them by the step that writes them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

from iterseg.errors import IterSegError
from iterseg.paths import partial_path

__all__ = ["RecordError", "json_ready", "read_json", "read_record", "write_json", "write_record"]


class RecordError(IterSegError):
    """A step record is missing, not strict JSON, or not the shape its reader expects."""


class Record(Protocol):
    """What :func:`write_record` and :func:`read_record` need of a record type."""

    def to_json(self) -> Any:
        """The record as a JSON-ready value."""
        ...

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """The record from the value :meth:`to_json` produced."""
        ...


R = TypeVar("R", bound=Record)


def json_ready(value: Any) -> Any:
    """``value`` with dataclasses, tuples, paths and numpy scalars made JSON-ready; nan -> ``None``."""
    if is_dataclass(value) and not isinstance(value, type):
        to_json = getattr(value, "to_json", None)
        if callable(to_json):
            return json_ready(to_json())
        return {f.name: json_ready(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item) and type(value).__module__ == "numpy":
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, data: Any, *, indent: int | None = 2) -> None:
    """Write ``data`` to ``path`` as strict JSON, atomically (a temporary file beside it, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    try:
        partial.write_text(json.dumps(json_ready(data), indent=indent, allow_nan=False) + "\n")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def read_json(path: Path) -> Any:
    """The strict-JSON value in ``path``; :class:`RecordError` naming the file when it is not one."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RecordError(f"{path}: missing; run the step that writes it (snakemake does so).") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise RecordError(
            f"{path}: not a valid JSON record ({exc}); delete it so that its step writes it again."
        ) from None


def write_record(path: Path, record: Record) -> None:
    """Write a step record (a frozen dataclass of this module) to ``path``, atomically."""
    write_json(path, record.to_json())


def read_record(path: Path, kind: type[R]) -> R:
    """Read the record of type ``kind`` from ``path``; :class:`RecordError` when it is not one."""
    data = read_json(path)
    try:
        return kind.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise RecordError(
            f"{path}: not a {kind.__name__} record ({type(exc).__name__}: {exc}); "
            "delete it so that its step writes it again."
        ) from None


def plain_fields(record: Any) -> dict[str, Any]:
    """A flat dataclass as a dict (for records whose JSON is their fields)."""
    return asdict(record)


# --- convert: converted/cases.json, excluded.json, check.json, skipped.json, assembled.json ---


# --- nnunet: planned.json, trained/fold_N.json, predicted.json / predictions.json ---


# --- evaluate: test_metrics.json, annotation_effort.json ---


# --- release: iteration.json, manifest.json ---
