"""Benchmark: the start-up check of converted snapshots vs ``snakemake --version``, same run.

Builds ``--snapshots`` dated snapshots of ``--cases`` cases each (default 10 x 200) of small
fake files, records each as its conversion does (``record_snapshot``, plus an empty
``cases.json``, so snakemake sees every snapshot converted), then times, as medians of
``--runs`` runs:

* ``snakemake --version`` as a whole process: the peer, what starting snakemake costs at all;
* the no-op start-up check, ``check_converted_snapshots`` on every snapshot, in this process
  (it runs inside snakemake's own process, so its imports are already paid);
* a real no-op ``snakemake -n`` of a project with those snapshots (the demo config and the
  repository's Snakefile), with the records in place and with them moved aside (the check then
  finds no record and skips every snapshot: the same start-up without the check).

Each case holds ``--files-per-case`` files (default 4: three image files and one annotation) of
``--file-kb`` KiB. The check costs one ``stat`` per file, not per byte (a file is hashed only
when its stat changed), so the count matters and the size does not. Four per case stands for
exports with multi-frame (enhanced) images or snapshots that carry mostly annotations; classic
one-file-per-slice CT means hundreds per case: run with ``--files-per-case 100`` (or more) to
see the check grow linearly with the file count.

Timings are with a warm page cache (the files were just written and read); the first start-up
after a reboot reads the directory entries from disk once.

    .venv/bin/python benchmarks/startup.py [--snapshots 10] [--cases 200] [--files-per-case 4]
        [--file-kb 1] [--runs 7] [--skip-dry-run] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from iterseg.rawdata.discovery import Snapshot, discover_snapshots
from iterseg.rawdata.fingerprint import (
    SNAPSHOT_RECORD,
    check_converted_snapshots,
    converted_dir,
    record_snapshot,
)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DATASET = "demo"  # config/demo.yaml as it is: CPU, one fold, no GPU detection at start-up
FIRST_DATE = dt.date(2026, 1, 15)
LIMIT = 1.5  # (snakemake --version + check) / snakemake --version


def make_project(root: Path, snapshots: int, cases: int, per_case: int, kb: int) -> list[Snapshot]:
    """Config, snapshots of fake files, an inbox case, and a recorded conversion of each snapshot."""
    shutil.copytree(REPO / "config", root / "config")
    raw = root / "data/rawdata" / DATASET
    payload = os.urandom(kb * 1024)
    for s in range(snapshots):
        date = (FIRST_DATE + dt.timedelta(days=30 * s)).isoformat()
        for c in range(cases):
            case = raw / f"{date}__{DATASET}" / f"P{s:02d}{c:04d}"
            (case / "CT").mkdir(parents=True)
            (case / "SEG").mkdir()
            for f in range(per_case - 1):
                (case / "CT" / f"IM{f:04d}").write_bytes(payload[f:] + payload[:f])
            (case / "SEG" / "seg.dcm").write_bytes(payload[::-1])
    (raw / "inbox" / "P101").mkdir(parents=True)
    snaps = discover_snapshots(root / "data/rawdata", DATASET)
    time.sleep(0.1)  # records newer than every file by a clock tick: none is "racily clean"
    procdata = root / "data/procdata"
    for snap in snaps:  # in date order, so each cases.json is newer than the earlier ones
        out = converted_dir(procdata, snap)
        record_snapshot(snap.path, out / SNAPSHOT_RECORD)
        (out / "cases.json").write_text("[]\n")
        time.sleep(0.01)
    return snaps


def median_time(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_quiet(cmd: list[str], cwd: Path) -> None:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")


def dry_runs(root: Path, snaps: list[Snapshot], runs: int) -> tuple[float, float]:
    """Median ``snakemake -n`` with the records and without (moved aside), interleaved."""
    cmd = [
        str(BIN / "snakemake"), "-n", "--snakefile", str(REPO / "Snakefile"), "--directory", str(root),
        "--configfile", str(root / "config/demo.yaml"),
    ]  # fmt: skip
    records = [converted_dir(root / "data/procdata", s) / SNAPSHOT_RECORD for s in snaps]
    run_quiet(cmd, root)  # warm-up: snakemake's own .snakemake folder, imports in the page cache
    with_check, without = [], []
    for _ in range(runs):
        start = time.perf_counter()
        run_quiet(cmd, root)
        with_check.append(time.perf_counter() - start)
        for r in records:
            r.rename(r.with_name(f".{r.name}.aside"))
        try:
            start = time.perf_counter()
            run_quiet(cmd, root)
            without.append(time.perf_counter() - start)
        finally:
            for r in records:
                r.with_name(f".{r.name}.aside").rename(r)
    return statistics.median(with_check), statistics.median(without)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--snapshots", type=int, default=10)
    parser.add_argument("--cases", type=int, default=200, help="cases per snapshot")
    parser.add_argument("--files-per-case", type=int, default=4)
    parser.add_argument("--file-kb", type=int, default=1, help="size of each fake file")
    parser.add_argument("--runs", type=int, default=7, help="runs per measurement (median)")
    parser.add_argument("--skip-dry-run", action="store_true", help="leave out the snakemake -n comparison")
    parser.add_argument("--workdir", type=Path, help="keep the project here (default: a temp dir)")
    args = parser.parse_args()
    load_start, began = os.getloadavg(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as name:
        root = args.workdir.resolve() if args.workdir else Path(name)
        if args.workdir:
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
        start = time.perf_counter()
        snaps = make_project(root, args.snapshots, args.cases, args.files_per_case, args.file_kb)
        files = args.snapshots * args.cases * args.files_per_case
        print(
            f"data: {args.snapshots} snapshots x {args.cases} cases x {args.files_per_case} files "
            f"({files} files of {args.file_kb} KiB), written and recorded in "
            f"{time.perf_counter() - start:.1f} s under {root}",
            flush=True,
        )
        procdata = root / "data/procdata"
        records = [converted_dir(procdata, s) / SNAPSHOT_RECORD for s in snaps]
        stamps = [r.stat().st_mtime_ns for r in records]
        check_converted_snapshots(snaps, procdata)  # warm-up; must find nothing to refresh
        if [r.stat().st_mtime_ns for r in records] != stamps:
            sys.exit("the warm-up check rewrote a record: the timed checks would not be the no-op case")
        version = median_time(lambda: run_quiet([str(BIN / "snakemake"), "--version"], root), args.runs)
        check = median_time(lambda: check_converted_snapshots(snaps, procdata), args.runs)
        dry = None if args.skip_dry_run else dry_runs(root, snaps, args.runs)
    load_end = os.getloadavg()
    ratio = (version + check) / version
    print(f"cores: {os.cpu_count()}, load average (1, 5, 15 min) before {load_start} after {load_end}")
    print(f"snakemake --version            {version:7.3f} s  (median of {args.runs})")
    print(f"start-up check, {len(snaps)} snapshots  {check:7.3f} s  ({check / files * 1e6:.2f} us per file)")
    verdict = "ok" if ratio <= LIMIT else "OVER"
    print(f"(snakemake --version + check) / snakemake --version = {ratio:.3f}  (limit {LIMIT}: {verdict})")
    print(f"files the check could stat within the limit: about {int(files * (LIMIT - 1) * version / check)}")
    if dry is not None:
        print(f"snakemake -n, records in place {dry[0]:7.3f} s")
        print(f"snakemake -n, without records  {dry[1]:7.3f} s  (the check skips every snapshot)")
        print(f"snakemake -n with / without = {dry[0] / dry[1]:.3f}")
    print(f"benchmark took {(time.perf_counter() - began) / 60:.1f} min")


if __name__ == "__main__":
    main()
