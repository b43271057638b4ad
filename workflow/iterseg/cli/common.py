"""What the command modules share: how a sub-command is registered, and how a handler reads its inputs."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from iterseg.dicom.seg_options import SegOptions, SegTransferSyntax
from iterseg.records import Record, read_record

if TYPE_CHECKING:
    from iterseg.convert.channels import Channel

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


def add_channels_option(parser: argparse.ArgumentParser) -> None:
    """``--channels``: a multi-sequence dataset's channels, as the rules pass them from the config."""
    parser.add_argument(
        "--channels",
        default="",
        help='JSON object, channel -> regexes over SeriesDescription/ProtocolName, e.g. \'{"FLAIR": '
        '["flair"], "T1": ["^t1"]}\'; the first is the annotated reference series (default: one series)',
    )


def channels(args: argparse.Namespace) -> tuple[Channel, ...]:
    """The channels ``--channels`` names (none: a single-series dataset)."""
    from iterseg.convert.channels import channels_from_json

    return channels_from_json(args.channels)


def add_seg_options(parser: argparse.ArgumentParser) -> None:
    """The SEG encoding options (``datasets.<name>.seg`` in the config) of a command writing SEGs."""
    parser.add_argument(
        "--transfer-syntax",
        default=SegTransferSyntax.DEFLATED.value,
        choices=[t.value for t in SegTransferSyntax],
        help="transfer syntax of the SEG file (default deflated: about 20-fold smaller; some PACS and "
        "viewers need explicit_vr_little_endian)",
    )
    parser.add_argument(
        "--keep-empty-frames",
        action="store_true",
        help="write a frame for every source slice, empty or not (for viewers that misplace SEGs "
        "whose empty frames are left out)",
    )


def seg_options(args: argparse.Namespace) -> SegOptions:
    """The :class:`SegOptions` of the options :func:`add_seg_options` added."""
    return SegOptions(SegTransferSyntax(args.transfer_syntax), omit_empty_frames=not args.keep_empty_frames)


def inference(args: argparse.Namespace) -> Any:
    """The ``Inference`` settings of ``--tile-step-size`` and ``--no-mirroring``."""
    from iterseg.nnunet.ensemble import Inference

    return Inference(tile_step_size=args.tile_step_size, use_mirroring=not args.no_mirroring)
