"""The ``iterseg`` command: its parser, logging to the step's ``--log``, and how a failure ends.

A step's error becomes one line (``iterseg: <message> (log: <file>)``) where snakemake runs and
exit status 2; a bug of ours or of a library exits 1 with its traceback in the log.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from iterseg import __version__
from iterseg.cli import models, pacs, steps, tools
from iterseg.errors import IterSegError

logger = logging.getLogger(__name__)

DESCRIPTION = """\
``iterseg`` command line: one sub-command per workflow step, each a thin layer over the package.
Heavy imports (torch, nnU-Net, highdicom) happen inside the commands so ``--help`` is instant."""

GROUPS = (
    ("workflow steps (the Snakemake rules run these)", steps),
    ("tools", tools),
    ("PACS", pacs),
    ("models", models),
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``iterseg`` command; ``--help`` lists the commands in groups."""
    parser = argparse.ArgumentParser(
        prog="iterseg", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"iterseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    parser.add_argument(
        "--log",
        help="write everything the step prints (nnU-Net's output too) to this file; errors also reach "
        "the terminal, one line each",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="<command>", help="one of the commands below"
    )
    groups = [(title, module.register(sub)) for title, module in GROUPS]
    parser.epilog = _command_list(sub, groups)
    return parser


def _command_list(sub: argparse._SubParsersAction, groups: Sequence[tuple[str, Sequence[str]]]) -> str:
    """The commands of each group with their one-line help (argparse cannot group sub-commands)."""
    width = max(len(name) for _, names in groups for name in names) + 4
    lines = []
    for title, names in groups:
        lines.append(f"{title}:")
        for name in names:
            lines += textwrap.wrap(
                sub.choices[name].description or "",
                width=100,
                initial_indent=f"  {name}".ljust(width),
                subsequent_indent=" " * width,
                break_on_hyphens=False,
            )
        lines.append("")
    lines.append("`iterseg <command> --help` shows a command's options.")
    return "\n".join(lines)


def _route_to_log(log: Path) -> TextIO:
    """Point this process's stdout and stderr (C libraries and nnU-Net's prints too) at ``log``.

    Returns the terminal's stderr: the error that ends a step must be seen where snakemake runs,
    not only in a rule log nobody opens.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    terminal = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return terminal


def _configure_logging(verbose: bool, quiet: bool, log: str | None = None) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    terminal = _route_to_log(Path(log)) if log else None
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    if terminal is not None:
        to_terminal = logging.StreamHandler(terminal)
        to_terminal.setLevel(logging.ERROR)
        to_terminal.setFormatter(logging.Formatter(f"iterseg: %(message)s (log: {log})"))
        logging.getLogger().addHandler(to_terminal)
    for noisy in ("highdicom", "matplotlib", "PIL", "dicomweb_client", "urllib3"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def _out_of_space(exc: OSError, args: argparse.Namespace) -> str:
    where = exc.filename or next(
        (getattr(args, name) for name in ("out", "output", "work", "results") if getattr(args, name, None)),
        "its output",
    )
    return (
        f"no space left on the device while writing {where} ({exc.strerror}). Free space there (df -h), "
        "or put data/procdata and data/results on a larger disk, then run again: finished steps are "
        "kept and rawdata was not changed."
    )


def _run(args: argparse.Namespace) -> None:
    """Run the command's handler, on a claimed GPU when ``--gpus`` names some."""
    if getattr(args, "gpus", None):
        from iterseg.cluster.gpus import claim_gpu

        # before any torch import: the step then sees only its own GPU, as cuda:0
        with claim_gpu(args.gpus, Path(args.gpu_lock_dir), count=getattr(args, "num_gpus", 1)):
            args.func(args)
    else:
        args.func(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``iterseg`` command."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose, args.quiet, args.log)
    from iterseg.processes import children_die_with_us

    # before any step forks (nnU-Net's data-loader workers): a step killed with -9 leaves no
    # worker behind; SIGTERM still goes through the train step's handler first
    children_die_with_us()
    try:
        _run(args)
    except IterSegError as exc:
        if args.verbose:
            logger.exception("iterseg %s failed", args.command)
        else:
            logger.error("%s", exc)
        return 2
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            return _unexpected(exc, args)
        logger.debug("out of space", exc_info=True)
        logger.error("%s", _out_of_space(exc, args))
        return 2
    except Exception as exc:  # a bug of ours or of a library: still one line where the user looks
        return _unexpected(exc, args)
    return 0


def _unexpected(exc: BaseException, args: argparse.Namespace) -> int:
    """Log the traceback (to the step's log with --log) and one line to the terminal; exit 1."""
    import traceback

    if not args.log and not args.verbose:
        raise exc  # run by hand: the traceback is the most useful output
    traceback.print_exception(exc, file=sys.stderr)  # stderr is the log file with --log
    sys.stderr.flush()
    logger.error(
        "iterseg %s stopped by an unexpected %s: %s. This is a bug of iterseg or a library it uses: please "
        "report it with the log; rawdata was not changed",
        args.command,
        type(exc).__name__,
        str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else "",
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
