"""The package stays ruff- and mypy-clean and the workflow passes snakemake's linter."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.unit
BIN = Path(sys.executable).parent


def test_ruff_clean() -> None:
    run = subprocess.run(
        [str(BIN / "ruff"), "check", "workflow", "tests"], cwd=REPO, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout


def test_mypy_clean() -> None:
    run = subprocess.run([str(BIN / "mypy")], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout


def test_cli_help_lists_every_step() -> None:
    run = subprocess.run([str(BIN / "iterseg"), "--help"], capture_output=True, text=True, check=True)
    for command in ("demo-data", "convert", "assemble", "plan", "train", "predict", "promote"):
        assert command in run.stdout
