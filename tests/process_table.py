"""Which processes still run, read from /proc: for the tests that ``kill -9`` a step."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path


def _stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (state first), None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()  # the name may hold spaces and parentheses


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (killed, not yet reaped by init)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def in_session(sid: int) -> list[int]:
    """Live processes of session ``sid`` (a step started with ``start_new_session=True``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and fields[0] != "Z" and int(fields[3]) == sid:
                pids.append(int(entry.name))
    return sorted(pids)


def children(pid: int) -> list[int]:
    """Live child processes of ``pid``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and fields[0] != "Z" and int(fields[1]) == pid:
                pids.append(int(entry.name))
    return sorted(pids)


def wait_dead(pids: Iterable[int], seconds: float = 5.0) -> list[int]:
    """The pids still alive after at most ``seconds``."""
    pids = list(pids)
    deadline = time.monotonic() + seconds
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def wait_session_empty(sid: int, seconds: float = 5.0) -> list[int]:
    """The processes of session ``sid`` still alive after at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while (left := in_session(sid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def kill_session(sid: int) -> None:
    """Clean-up: SIGKILL what is left of session ``sid``, by pid (never by name)."""
    for pid in in_session(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def describe(pids: Iterable[int]) -> str:
    """``pid: command line`` per process, for assertion messages."""
    lines = []
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmd = "(gone)"
        lines.append(f"{pid}: {cmd[:200]}")
    return "\n".join(lines)
