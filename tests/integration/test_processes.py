"""Children die with their parent (``iterseg.processes``): real processes, real ``kill -9``, seconds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from process_table import alive, describe, in_session, kill_session, wait_dead, wait_session_empty

pytestmark = pytest.mark.integration


@pytest.fixture
def started() -> Iterator[list[int]]:
    """Pids the test let loose; whatever still runs at the end is killed, one by one."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def python(script: str, *args: str) -> subprocess.Popen[str]:
    """``script`` in a new interpreter; it reports pids as a JSON line on stdout."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args], stdout=subprocess.PIPE, text=True
    )


FORKS = """
    import json, os, sys, time
    from iterseg.processes import children_die_with_us

    if sys.argv[1] == "on":
        children_die_with_us()
    if os.fork() == 0:
        grandchild = os.fork()
        if grandchild == 0:
            time.sleep(60)
            os._exit(0)
        print(json.dumps([os.getpid(), grandchild]), flush=True)
        time.sleep(60)
        os._exit(0)
    time.sleep(60)
"""


@pytest.mark.parametrize("hooks", ["on", "off"])
def test_forked_children_and_theirs_die_with_a_killed_parent(hooks: str, started: list[int]) -> None:
    with python(FORKS, hooks) as parent:
        assert parent.stdout is not None
        children = json.loads(parent.stdout.readline())
        started += children
        parent.kill()
    if hooks == "on":
        assert wait_dead(children) == []
    else:  # the failure the hooks are there for: orphans that keep running
        assert wait_dead(children, 1.0) == children


def test_the_child_goes_when_its_forking_thread_ends_not_the_process(started: list[int]) -> None:
    """PR_SET_PDEATHSIG's gotcha, the reason nothing may fork from a short-lived thread."""
    script = """
        import json, os, threading, time
        from iterseg.processes import children_die_with_us

        children_die_with_us()
        pids = []
        ready, ready_w = os.pipe()

        def fork() -> None:
            pid = os.fork()
            if pid == 0:
                os.write(ready_w, b"+")  # the at-fork hook has run: its death signal is set
                time.sleep(60)
                os._exit(0)
            pids.append(pid)
            # else the thread may end first: the child would then belong to another thread
            os.read(ready, 1)

        thread = threading.Thread(target=fork)
        thread.start()
        thread.join()
        print(json.dumps(pids), flush=True)
        time.sleep(60)
    """
    with python(script) as parent:
        assert parent.stdout is not None
        child = json.loads(parent.stdout.readline())
        started += child
        try:
            assert wait_dead(child) == []
            assert parent.poll() is None
        finally:
            parent.kill()


def test_a_parent_dead_before_the_call_kills_the_child_at_once() -> None:
    # a recorded parent other than the current one: as if it had died and init adopted the child
    run = subprocess.run(
        [sys.executable, "-c", "from iterseg.processes import die_with_parent; die_with_parent(1)"],
        check=False,
    )
    assert run.returncode == -signal.SIGKILL
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os; from iterseg.processes import die_with_parent as d; d(os.getppid())",
        ],
        check=False,
    )
    assert run.returncode == 0


def test_registering_twice_and_in_a_fork_adds_one_hook() -> None:
    script = """
        import os
        import iterseg.processes as processes

        calls = []
        register = os.register_at_fork
        os.register_at_fork = lambda **hooks: (calls.append(hooks), register(**hooks))[1]
        processes.children_die_with_us()
        processes.children_die_with_us()
        pid = os.fork()
        if pid == 0:
            processes.children_die_with_us()
            os._exit(10 + len(calls))
        os._exit(os.waitpid(pid, 0)[1] >> 8)
    """
    assert subprocess.run([sys.executable, "-c", textwrap.dedent(script)], check=False).returncode == 11


SPAWN_POOL = """
    import os, sys, time
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context
    from pathlib import Path

    from iterseg.processes import die_with_parent_initializer


    def hold(folder: str) -> None:
        Path(folder, str(os.getpid())).touch()
        time.sleep(60)


    if __name__ == "__main__":
        pool = ProcessPoolExecutor(
            2, get_context("spawn"), initializer=die_with_parent_initializer, initargs=(os.getpid(),)
        )
        for _ in range(4):
            pool.submit(hold, sys.argv[1])
        time.sleep(60)
"""


def test_spawned_pool_workers_die_with_a_killed_parent(tmp_path: Path) -> None:
    (tmp_path / "driver.py").write_text(textwrap.dedent(SPAWN_POOL))  # spawn re-imports it: a file
    running = tmp_path / "running"
    running.mkdir()
    log = tmp_path / "driver.log"  # the resource tracker's warnings about the killed parent too
    with log.open("w") as err:
        parent = subprocess.Popen(
            [sys.executable, "driver.py", str(running)], cwd=tmp_path, stderr=err, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 60
        while len(list(running.iterdir())) < 2 and time.monotonic() < deadline and parent.poll() is None:
            time.sleep(0.05)
        assert len(list(running.iterdir())) == 2, log.read_text()
        running_now = in_session(parent.pid)  # the driver, its resource tracker, two workers
        assert len(running_now) == 4, describe(running_now)
        parent.kill()
        parent.wait()
        left = wait_session_empty(parent.pid)
        assert left == [], describe(left)
    finally:
        parent.kill()
        parent.wait()
        kill_session(parent.pid)
