"""``iterseg pacs pull|status|push``: the dataset's PACS over DICOMweb (see :mod:`iterseg.pacs`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from iterseg.cli.common import add_command

COMMANDS = ("pacs",)
DEFAULT_CONFIG = Path("config/config.yaml")


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``, nested mappings merged (as snakemake merges --configfile files)."""
    merged = dict(base)
    for key, value in update.items():
        old = merged.get(key)
        merged[key] = _merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    return merged


def _settings(args: argparse.Namespace) -> Any:
    import yaml

    from iterseg.config import load_settings
    from iterseg.errors import ConfigError

    config: dict[str, Any] = {}
    files = ([DEFAULT_CONFIG] if DEFAULT_CONFIG.is_file() else []) + [Path(f) for f in args.configfile]
    for path in files:
        try:
            config = _merge(config, yaml.safe_load(path.read_text()) or {})
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot be read as YAML ({exc}).") from None
    if args.dataset not in config.get("datasets", {}):
        raise ConfigError(
            f"dataset {args.dataset} is not in {', '.join(map(str, files)) or 'the config'}; "
            "pass the config that has it with --configfile."
        )
    return load_settings(config)


def cmd_pull(args: argparse.Namespace) -> None:
    """Pull what is new on the PACS into a new dated snapshot and the inbox."""
    from iterseg.pacs.pull import describe_pull, pull_dataset

    settings = _settings(args)
    result = pull_dataset(
        settings, args.dataset, rawdata=settings.rawdata, inbox_name=settings.inbox,
        results=Path(args.results), date=args.date,
    )  # fmt: skip
    sys.stdout.write("\n".join(describe_pull(result, settings.datasets[args.dataset].pacs.url)) + "\n")


def cmd_status(args: argparse.Namespace) -> None:
    """Show what is on the PACS that no pull took yet."""
    from iterseg.pacs.pull import describe_plan, pacs_status

    settings = _settings(args)
    plan = pacs_status(
        settings,
        args.dataset,
        rawdata=settings.rawdata,
        inbox_name=settings.inbox,
        results=Path(args.results),
    )
    lines = describe_plan(plan, settings.datasets[args.dataset].pacs.url)
    lines.append("nothing new to pull." if plan.empty else "run `iterseg pacs pull` to take it.")
    sys.stdout.write("\n".join(lines) + "\n")


def cmd_push(args: argparse.Namespace) -> None:
    """Push a promoted iteration's predicted SEGs to the PACS (the pacs_push rule)."""
    from iterseg.config import load_settings
    from iterseg.errors import PacsError
    from iterseg.pacs.push import push_iteration

    pacs = load_settings(json.loads(args.config_json)).datasets[args.dataset].pacs
    if pacs is None:
        raise PacsError(f"dataset {args.dataset} has no pacs: entry in the config; nothing to push to.")
    push_iteration(
        pacs, args.dataset, iteration=Path(args.iteration), predictions=Path(args.predictions),
        output=Path(args.output),
    )  # fmt: skip


def register(sub: argparse._SubParsersAction) -> tuple[str, ...]:
    """Add ``pacs`` and its own sub-commands to ``sub``."""
    parser = add_command(
        sub, "pacs", _no_action, "the dataset's PACS over DICOMweb: pull new studies, status, push SEGs"
    )
    actions = parser.add_subparsers(dest="pacs_command", required=True, metavar="<action>")
    for name, func, text in (
        ("pull", cmd_pull, "write what is new on the PACS as a new dated snapshot (and new inbox cases)"),
        ("status", cmd_status, "show what is on the PACS that no pull took yet (writes nothing)"),
    ):
        p = actions.add_parser(name, description=text, help=text)
        p.set_defaults(func=func)
        p.add_argument("dataset", help="a dataset of the config with a pacs: entry")
        p.add_argument(
            "--configfile", action="append", default=[],
            help="config file(s) over config/config.yaml, as for snakemake (e.g. config/demo.yaml)",
        )  # fmt: skip
        p.add_argument("--results", default="data/results", help="the results root (our predicted SEGs)")
        if name == "pull":
            p.add_argument(
                "--date", help="snapshot date YYYY-MM-DD (default today); after every existing one"
            )
    p = actions.add_parser(
        "push", description="push a promoted iteration's predicted SEGs (the rule runs it)"
    )
    p.set_defaults(func=cmd_push)
    p.add_argument("--dataset", required=True)
    p.add_argument("--config-json", required=True, help="the validated config as JSON (the rule passes it)")
    p.add_argument("--iteration", required=True, help="the iteration's iteration.json")
    p.add_argument("--predictions", required=True, help="its predictions.json")
    p.add_argument("--output", required=True, help="the push record to write (pacs_pushed.json)")
    return COMMANDS


def _no_action(args: argparse.Namespace) -> None:  # argparse requires an action first
    raise SystemExit("iterseg pacs: choose pull, status or push")
