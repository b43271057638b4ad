"""The package stays ruff- and mypy-clean; the rules are snakefmt-formatted and pass snakemake's linter."""

import importlib.metadata
import re
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


def test_rule_files_are_snakefmt_formatted() -> None:
    command = [str(BIN / "snakefmt"), "--check", "Snakefile", "workflow/rules"]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


# Deliberately not followed: a conda environment or container per rule. Every rule runs the
# `iterseg` of the environment snakemake runs in (common.smk puts its bin first on PATH);
# a per-rule conda env would rebuild the 7 GB torch/nnU-Net environment for the workflow.
ACCEPTED_LINT = "Specify a conda environment or container for each rule."


def test_snakemake_lint_finds_nothing_but_the_accepted_lint(tmp_path: Path) -> None:
    for name in ("Snakefile", "config", "workflow"):
        (tmp_path / name).symlink_to(REPO / name)
    demo = [str(BIN / "iterseg"), "demo-data", str(tmp_path / "data/rawdata/demo")]
    subprocess.run(demo, check=True, capture_output=True)
    run = subprocess.run(
        [str(BIN / "snakemake"), "--configfile", "config/demo.yaml", "--lint"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    output = run.stdout + run.stderr  # exit 1 whenever it lists anything, the accepted lint too
    findings = set(re.findall(r"^\s+\* (.+?):?$", output, flags=re.M))
    assert "Lints for rule convert_snapshot" in output  # the linter read the rules
    assert findings == {ACCEPTED_LINT}, output


def test_the_version_is_defined_once() -> None:
    import iterseg

    run = subprocess.run([str(BIN / "iterseg"), "--version"], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == f"iterseg {iterseg.__version__}"
    assert importlib.metadata.version("iterseg") == iterseg.__version__
    assert "version =" not in (REPO / "pyproject.toml").read_text().split("[project]")[1].split("[")[0]
