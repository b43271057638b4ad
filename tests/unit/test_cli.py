"""The ``iterseg`` command line: grouped ``--help``, every command's ``--help``, thin handlers."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from iterseg.cli import app, models, pacs, steps, tools

pytestmark = pytest.mark.unit

BIN = Path(sys.executable).parent
COMMANDS = steps.COMMANDS + tools.COMMANDS + pacs.COMMANDS + models.COMMANDS
MAX_HANDLER_LINES = 15  # def, docstring, imports, one engine call, the write


def test_help_lists_both_groups_and_every_command_with_its_help() -> None:
    run = subprocess.run([str(BIN / "iterseg"), "--help"], capture_output=True, text=True, check=True)
    steps_at = run.stdout.index("workflow steps (the Snakemake rules run these):")
    tools_at = run.stdout.index("\ntools:\n")
    assert run.stdout.index("\nPACS:\n") > tools_at
    parser = app.build_parser()
    choices = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert sorted(choices) == sorted(COMMANDS)
    for name in COMMANDS:
        line = next(li for li in run.stdout.splitlines() if li.startswith(f"  {name} "))
        at = run.stdout.index(line)
        assert (steps_at < at < tools_at) == (name in steps.COMMANDS), name
        first_words = " ".join((choices[name].description or "").split()[:4])
        assert first_words in " ".join(line.split()), (name, line)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_its_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        app.main([command, "--help"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: iterseg {command} ")


def test_the_console_script_is_main_of_iterseg_cli() -> None:
    import iterseg.cli

    assert iterseg.cli.main is app.main
    assert 'iterseg = "iterseg.cli:main"' in (Path(__file__).parents[2] / "pyproject.toml").read_text()


def test_the_gpu_lock_folder_and_version_are_defined_once() -> None:
    from iterseg import __version__
    from iterseg.cluster.gpus import DEFAULT_LOCK_DIR

    args = app.build_parser().parse_args(["train", "--work", "w", "--plan-record", "p", "--trainer", "t",
                                          "--fold", "0", "--output", "o"])  # fmt: skip
    assert args.gpu_lock_dir == str(DEFAULT_LOCK_DIR)
    run = subprocess.run([str(BIN / "iterseg"), "--version"], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == f"iterseg {__version__}"


def test_promote_calls_one_engine_function_of_release() -> None:
    from iterseg.release.iteration import release_iteration

    source = inspect.getsource(steps.cmd_promote)
    assert "release_iteration(" in source
    assert list(inspect.signature(release_iteration).parameters) == [
        "results", "iteration", "plan_record", "assembled", "fold_records", "predictions", "test_metrics",
        "roi_yaml", "config", "previous", "effort", "max_dice_drop",
    ]  # fmt: skip


@pytest.mark.parametrize("module", [steps, tools, pacs, models, app])
def test_handlers_stay_short_and_write_through_records(module: object) -> None:
    path = Path(inspect.getfile(module))  # type: ignore[arg-type]
    text = path.read_text()
    assert "json.dumps" not in text and "_write_json" not in text and ".write_text(" not in text
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            assert length <= 60, f"{path.name}: {node.name} has {length} lines"
            if node.name.startswith("cmd_"):
                assert length <= MAX_HANDLER_LINES, f"{path.name}: {node.name} has {length} lines"


@pytest.mark.parametrize("action", ["pull", "status", "push"])
def test_every_pacs_action_has_its_help(action: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        app.main(["pacs", action, "--help"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: iterseg pacs {action} ")
