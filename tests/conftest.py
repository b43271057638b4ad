"""Shared fixtures: the demo data is generated, never stored in git."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def demo_rawdata(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<tmp>/rawdata/demo`` written once per session by the real demo generator."""
    from iterseg.rawdata.demo import write_demo_dataset

    root = tmp_path_factory.mktemp("rawdata") / "demo"
    write_demo_dataset(root)
    return root


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> digest), plus the folders."""
    digest: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        digest[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return digest


@pytest.fixture(scope="session")
def planned_demo(tmp_path_factory: pytest.TempPathFactory, demo_rawdata: Path) -> Path:
    """The demo converted and planned (two folds) once per session, for the cluster tests to copy."""
    import os

    from slurm_project import client_env, planned_project

    return planned_project(tmp_path_factory.mktemp("planned"), demo_rawdata, client_env(dict(os.environ)))
