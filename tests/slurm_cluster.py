"""A real single-node SLURM on localhost for the tests: munge, slurmctld, slurmd, fake GPUs.

Debian's packages (installed by ``workflow/scripts/setup.sh`` with ``EXTRAS=test`` as root).
No systemd and no cgroups here, so process tracking is linuxproc and tasks are not confined;
two character devices stand in for GPUs, so ``--gres=gpu:1`` is scheduled and sets
``CUDA_VISIBLE_DEVICES`` while the work itself runs on the CPU.

With ``accounting=True`` it also runs a private MariaDB (data, socket, pid and log under
``root``, TCP on 127.0.0.1 only) and slurmdbd, so ``sacct`` reports jobs as on a real cluster
(without it, ``sacct`` fails, and tools that poll it misbehave; see the test notes).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sinfo", "sbatch", "squeue")
# accounting: each entry is one program, under any of its names
ACCOUNTING = (
    ("slurmdbd",),
    ("sacct",),
    ("sacctmgr",),
    ("mariadbd", "mysqld"),
    ("mariadb-install-db", "mysql_install_db"),
    ("mariadb", "mysql"),
)
CLUSTER = "iterseg-test"
MARKER = f"# written by tests/slurm_cluster.py for ClusterName={CLUSTER}"


def _find(*names: str) -> str | None:
    for name in names:
        for found in (shutil.which(name), Path("/usr/sbin", name), Path("/usr/bin", name)):
            if found is not None and Path(found).exists():
                return str(found)
    return None


def available(accounting: bool = False) -> str | None:
    """Why a local SLURM (with accounting: also slurmdbd and MariaDB) cannot start, or None."""
    missing = [d for d in DAEMONS if shutil.which(d) is None and not Path("/usr/sbin", d).exists()]
    if accounting:
        missing += ["/".join(names) for names in ACCOUNTING if _find(*names) is None]
    if missing:
        return f"missing {missing}: run EXTRAS=test bash workflow/scripts/setup.sh as root"
    if os.geteuid() != 0:
        return "the local SLURM runs its daemons as root"
    return None


@dataclass
class LocalSlurm:
    """A running cluster; ``env`` holds SLURM_CONF for clients.

    ``stop`` ends the daemons in ``pids`` together, then those in ``after`` one by one, in
    order (slurmdbd before its database, munge last), and removes ``installed``.
    """

    root: Path
    env: dict[str, str]
    pids: list[Path]
    installed: list[Path]
    after: list[Path] = field(default_factory=list)

    def stop(self) -> None:
        # jobs still running (a test that failed midway) would leave their slurmstepd behind
        subprocess.run(["scancel", f"--user={os.getuid()}"], env=self.env, capture_output=True, check=False)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            queue = subprocess.run(
                ["squeue", "-h", "-t", "PENDING,RUNNING,COMPLETING", "-o", "%i"],
                env=self.env, capture_output=True, text=True, check=False,
            )  # fmt: skip
            if queue.returncode != 0 or not queue.stdout.strip():
                break
            time.sleep(0.5)
        for group in [list(reversed(self.pids)), *([p] for p in self.after)]:
            for pid_file in group:
                if pid_file.is_file():
                    try:
                        os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
                    except (ProcessLookupError, ValueError):
                        pass
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and any(_alive(p) for p in group):
                time.sleep(0.2)
        # a step whose slurmd is gone never ends by itself; start() refused any SLURM not ours
        subprocess.run(["pkill", "-KILL", "-x", "slurmstepd"], capture_output=True, check=False)
        for path in self.installed:
            path.unlink(missing_ok=True)


def _alive(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
        # exited but not yet reaped by init (which can take seconds here) counts as stopped
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, ValueError, IndexError):
        return False


def _running(name: str) -> bool:
    """Whether a process of that name runs; exited ones not yet reaped (zombies) do not count."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            comm, rest = stat.read_text().split("(", 1)[1].rsplit(")", 1)
        except (OSError, IndexError, ValueError):
            continue
        if comm == name and rest.split()[0] != "Z":
            return True
    return False


def _sbin(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:] if path.exists() else ""


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _start_mariadb(cluster: LocalSlurm) -> tuple[int, str]:
    """A private MariaDB under ``root/mysql`` on 127.0.0.1; its port and slurm's password."""
    root = cluster.root
    base = root / "mysql"
    (base / "data").mkdir(parents=True, exist_ok=True)
    port, password = _free_port(), secrets.token_hex(12)
    pid_file, sock, log = base / "mariadbd.pid", base / "mariadbd.sock", root / "log" / "mariadb.log"
    cnf = base / "my.cnf"  # --defaults-file: nothing from /etc/mysql (its datadir is the system's)
    cnf.write_text(
        "\n".join(
            [
                "[mysqld]",
                f"datadir={base / 'data'}",
                f"socket={sock}",
                f"pid-file={pid_file}",
                f"log-error={log}",
                f"port={port}",
                "bind-address=127.0.0.1",
                "user=root",
                "skip-name-resolve",
                "innodb_lock_wait_timeout=900",  # what slurmdbd asks for
                "[client]",
                f"socket={sock}",
                "user=root",
                "",
            ]
        )
    )
    install = subprocess.run(
        [
            _find("mariadb-install-db", "mysql_install_db") or "mariadb-install-db",
            f"--defaults-file={cnf}",
            "--auth-root-authentication-method=socket",
            "--skip-test-db",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if install.returncode != 0:
        raise RuntimeError(f"mariadb-install-db failed:\n{install.stdout[-2000:]}{install.stderr[-2000:]}")
    cluster.after.insert(0, pid_file)  # stopped after slurmdbd, before munge
    with open(root / "log" / "mariadbd.out", "ab") as out:
        # it does not fork by itself: setsid -f detaches it like the other daemons
        subprocess.run(
            ["setsid", "-f", _find("mariadbd", "mysqld") or "mariadbd", f"--defaults-file={cnf}"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            check=True,
        )
    grant = (
        f"CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '{password}';"
        " GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
    )
    client = _find("mariadb", "mysql") or "mariadb"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (pid_file.exists() and not _alive(pid_file)):
        if sock.exists():  # the socket appears once it accepts connections
            done = subprocess.run(
                [client, f"--defaults-file={cnf}", "-e", grant], capture_output=True, check=False
            )
            if done.returncode == 0:
                return port, password
        time.sleep(0.1)
    raise RuntimeError(f"the private MariaDB did not start:\n{_tail(log)}")


def start(root: Path, gpus: int = 2, min_job_age: int = 600, accounting: bool = False) -> LocalSlurm:
    """Write the configuration under ``root`` and start munge, slurmctld and slurmd.

    With ``accounting``, first a private MariaDB and slurmdbd, and the cluster is registered.
    """
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
    conf, gres, dbd_conf = etc / "slurm.conf", etc / "gres.conf", etc / "slurmdbd.conf"
    if conf.exists() and f"ClusterName={CLUSTER}" not in conf.read_text():
        # a leftover of an interrupted test run is ours to replace; a real site's is not
        raise RuntimeError(
            f"{etc} already holds a SLURM configuration; not overwriting it for a test cluster"
        )
    if accounting and dbd_conf.exists() and MARKER not in dbd_conf.read_text(errors="replace"):
        raise RuntimeError(f"{dbd_conf} exists; not overwriting it for a test cluster")
    dbd_port = _free_port() if accounting else 0
    if accounting:
        # slurmdbd stores jobs; the gpus are counted in AllocTRES
        storage = [
            "JobAcctGatherType=jobacct_gather/linux",
            "AccountingStorageType=accounting_storage/slurmdbd",
            f"AccountingStorageHost={host}",
            f"AccountingStoragePort={dbd_port}",
            "AccountingStorageTRES=gres/gpu",
        ]
    else:
        storage = [
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
        ]
    conf.write_text(
        "\n".join(
            [
                f"ClusterName={CLUSTER}",
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
                *storage,
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
    pids: list[Path] = []
    cluster = LocalSlurm(root, env, pids, [conf, gres])
    try:
        # munge: the default socket (slurm looks there); a key of our own if the system has none
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        os.chmod("/run/munge", 0o755)
        if not Path("/etc/munge/munge.key").exists():
            subprocess.run([_sbin("mungekey"), "--create"], check=True)
        munge_pid = root / "munged.pid"
        if not _running("munged"):
            subprocess.run([_sbin("munged"), "--force", f"--pid-file={munge_pid}"], check=True)
            # with accounting, munge stops last: slurmctld and slurmdbd use it until they stop
            (cluster.after if accounting else pids).append(munge_pid)
        if accounting:
            _start_accounting(cluster, host, dbd_conf, dbd_port)
        subprocess.run([_sbin("slurmctld"), "-f", str(conf)], check=True, env=env)
        pids.append(root / "slurmctld.pid")
        subprocess.run([_sbin("slurmd"), "-f", str(conf)], check=True, env=env)
        pids.append(root / "slurmd.pid")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = subprocess.run(
                ["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env, check=False
            )
            if state.stdout.strip() in ("idle", "mix", "alloc"):
                return cluster
            time.sleep(0.5)
    except BaseException:
        cluster.stop()
        raise
    cluster.stop()
    log = _tail(root / "log" / "slurmctld.log")
    raise RuntimeError(f"local SLURM did not become idle: {state.stdout} {state.stderr}\n{log}")


def _start_accounting(cluster: LocalSlurm, host: str, dbd_conf: Path, dbd_port: int) -> None:
    """MariaDB, then slurmdbd (listening before slurmctld starts), then the cluster's record."""
    root, env = cluster.root, cluster.env
    cluster.installed.append(dbd_conf)
    db_port, password = _start_mariadb(cluster)
    dbd_conf.touch(mode=0o600)
    os.chmod(dbd_conf, 0o600)  # slurmdbd refuses a configuration others can read
    os.chown(dbd_conf, 0, 0)  # ... or one not owned by its SlurmUser
    dbd_conf.write_text(
        "\n".join(
            [
                MARKER,
                "AuthType=auth/munge",
                f"DbdHost={host}",
                f"DbdPort={dbd_port}",
                "SlurmUser=root",
                f"PidFile={root / 'slurmdbd.pid'}",
                f"LogFile={root / 'log' / 'slurmdbd.log'}",
                "StorageType=accounting_storage/mysql",
                "StorageHost=127.0.0.1",
                f"StoragePort={db_port}",
                "StorageUser=slurm",
                f"StoragePass={password}",
                "StorageLoc=slurm_acct_db",
                "",
            ]
        )
    )
    subprocess.run([_sbin("slurmdbd")], check=True, env=env)
    dbd_pid = root / "slurmdbd.pid"
    cluster.after.insert(0, dbd_pid)
    deadline = time.monotonic() + 60
    while not _listening(dbd_port):  # it listens once its tables are in place
        if time.monotonic() > deadline or (dbd_pid.exists() and not _alive(dbd_pid)):
            raise RuntimeError(f"slurmdbd did not start:\n{_tail(root / 'log' / 'slurmdbd.log')}")
        time.sleep(0.1)
    # slurmctld would add its cluster itself; registering first leaves no window without it
    sacctmgr = _find("sacctmgr") or "sacctmgr"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sacctmgr, *args], capture_output=True, text=True, env=env, check=False, timeout=60
        )

    while True:
        add = run("-i", "add", "cluster", CLUSTER)
        if add.returncode == 0 or CLUSTER in run("-n", "-P", "list", "cluster").stdout:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"cluster {CLUSTER} not registered: {add.stdout} {add.stderr}")
        time.sleep(0.5)  # slurmdbd listens but may not answer yet
