"""A project folder wired to a test Orthanc: its config, its credentials, and runs of ``iterseg pacs``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from conftest import REPO
from orthanc_server import OrthancServer

USER_ENV, PASSWORD_ENV = "ITERSEG_TEST_PACS_USER", "ITERSEG_TEST_PACS_PASSWORD"
CONFIG = "config/demo.yaml"


def write_config(
    project: Path,
    url: str,
    promotion: dict[str, Any] | None = None,
    nnunet: dict[str, Any] | None = None,
    **pacs: Any,
) -> Path:
    """``project/config/``: the repository's configs, the demo dataset given a PACS at ``url``.

    ``promotion`` replaces the demo's gate; ``nnunet`` updates its nnunet settings (key by key).
    """
    shutil.copytree(REPO / "config", project / "config", dirs_exist_ok=True)
    config = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    config["datasets"]["demo"]["pacs"] = {
        "url": url,
        "auth": {"username_env": USER_ENV, "password_env": PASSWORD_ENV},
        **pacs,
    }
    if promotion is not None:
        config["promotion"] = promotion
    config["nnunet"].update(nnunet or {})
    path = project / CONFIG
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def settings(project: Path) -> Any:
    """The project's validated settings, paths made absolute (in-process calls run elsewhere)."""
    from iterseg.config import load_settings

    config = yaml.safe_load((project / CONFIG).read_text())
    config["rawdata"] = str(project / "data/rawdata")
    config["datasets"]["demo"]["roi_yaml"] = str(project / "config/roi_demo.yaml")
    return load_settings(config)


def credentials_env(server: OrthancServer, password: str | None = None) -> dict[str, str]:
    """The environment with the PACS credentials (``password`` overrides the right one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env[USER_ENV], env[PASSWORD_ENV] = server.user, password or server.password
    return env


def iterseg_pacs(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``iterseg pacs ARGS demo --configfile config/demo.yaml`` run in ``project``, as a user runs it."""
    exe = Path(sys.executable).parent / "iterseg"
    action, *rest = args
    return subprocess.run(
        [str(exe), "pacs", action, "demo", "--configfile", CONFIG, *rest],
        cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def upload_demo(server: OrthancServer, demo: Path, which: str) -> int:
    """Store the demo's ``which`` (``first``: snapshot 1, ``inbox``) on ``server``; instances stored."""
    snapshots = sorted(p for p in demo.iterdir() if p.name[:1].isdigit())
    folder = snapshots[0] if which == "first" else demo / "inbox"
    return server.upload_folder(folder)
