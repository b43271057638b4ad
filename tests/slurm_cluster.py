"""A real single-node SLURM on localhost for the tests: munge, slurmctld, slurmd, fake GPUs.

Debian's packages (installed by ``workflow/scripts/setup.sh`` with ``EXTRAS=test`` as root).
No systemd and no cgroups here, so process tracking is linuxproc and tasks are not confined;
two character devices stand in for GPUs, so ``--gres=gpu:1`` is scheduled and sets
``CUDA_VISIBLE_DEVICES`` while the work itself runs on the CPU.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sinfo", "sbatch", "squeue")


def available() -> str | None:
    """Why a local SLURM cannot start here, or None."""
    missing = [d for d in DAEMONS if shutil.which(d) is None and not Path("/usr/sbin", d).exists()]
    if missing:
        return f"missing {missing}: run EXTRAS=test bash workflow/scripts/setup.sh as root"
    if os.geteuid() != 0:
        return "the local SLURM runs its daemons as root"
    return None


@dataclass
class LocalSlurm:
    """A running cluster; ``env`` holds SLURM_CONF for clients."""

    root: Path
    env: dict[str, str]
    pids: list[Path]
    installed: list[Path]

    def stop(self) -> None:
        for pid_file in reversed(self.pids):
            if pid_file.is_file():
                try:
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(p) for p in self.pids):
            time.sleep(0.2)
        for path in self.installed:
            path.unlink(missing_ok=True)


def _alive(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text().split()[0]), 0)
    except (OSError, ValueError):
        return False
    return True


def _sbin(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def start(root: Path, gpus: int = 2, min_job_age: int = 600) -> LocalSlurm:
    """Write the configuration under ``root`` and start munge, slurmctld and slurmd."""
    host = socket.gethostname()
    for sub in ("state", "spool", "log", "dev"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(gpus):
        device = root / "dev" / f"fakegpu{i}"
        if not device.exists():
            os.mknod(device, 0o666 | 0o020000, os.makedev(1, 3))  # a character device, like /dev/null
    memory = int(
        next(
            line.split()[1]
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
    )
    cpus = os.cpu_count() or 1
    # srun inside a job finds its configuration only at the compiled-in default path (the
    # job's SLURM_CONF is not used for it), so the files go to /etc/slurm; refused if present.
    etc = Path("/etc/slurm")
    etc.mkdir(parents=True, exist_ok=True)
    conf, gres = etc / "slurm.conf", etc / "gres.conf"
    if conf.exists() and "ClusterName=iterseg-test" not in conf.read_text():
        # a leftover of an interrupted test run is ours to replace; a real site's is not
        raise RuntimeError(
            f"{etc} already holds a SLURM configuration; not overwriting it for a test cluster"
        )
    conf.write_text(
        "\n".join(
            [
                "ClusterName=iterseg-test",
                f"SlurmctldHost={host}",
                "SlurmUser=root",
                "SlurmdUser=root",
                "AuthType=auth/munge",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core_Memory",
                "SchedulerType=sched/backfill",
                "SchedulerParameters=sched_interval=2",
                f"MinJobAge={min_job_age}",
                "MailProg=/bin/true",
                "ReturnToService=2",
                "GresTypes=gpu",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none",
                f"StateSaveLocation={root / 'state'}",
                f"SlurmdSpoolDir={root / 'spool'}",
                f"SlurmctldPidFile={root / 'slurmctld.pid'}",
                f"SlurmdPidFile={root / 'slurmd.pid'}",
                f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
                f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
                f"NodeName={host} CPUs={cpus} RealMemory={int(memory / 1024 * 0.85)} Gres=gpu:{gpus}",
                f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )
    )
    gres.write_text(f"AutoDetect=off\nName=gpu File={root / 'dev'}/fakegpu[0-{gpus - 1}]\n")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    pids = []
    # munge: the default socket (slurm looks there); a key of our own if the system has none
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    os.chmod("/run/munge", 0o755)
    if not Path("/etc/munge/munge.key").exists():
        subprocess.run([_sbin("mungekey"), "--create"], check=True)
    munge_pid = root / "munged.pid"
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True, check=False).returncode != 0:
        subprocess.run([_sbin("munged"), "--force", f"--pid-file={munge_pid}"], check=True)
        pids.append(munge_pid)
    subprocess.run([_sbin("slurmctld"), "-f", str(conf)], check=True, env=env)
    pids.append(root / "slurmctld.pid")
    subprocess.run([_sbin("slurmd"), "-f", str(conf)], check=True, env=env)
    pids.append(root / "slurmd.pid")
    cluster = LocalSlurm(root, env, pids, [conf, gres])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = subprocess.run(
            ["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env, check=False
        )
        if state.stdout.strip() in ("idle", "mix", "alloc"):
            return cluster
        time.sleep(0.5)
    cluster.stop()
    log = (
        (root / "log" / "slurmctld.log").read_text()[-2000:]
        if (root / "log" / "slurmctld.log").exists()
        else ""
    )
    raise RuntimeError(f"local SLURM did not become idle: {state.stdout} {state.stderr}\n{log}")
