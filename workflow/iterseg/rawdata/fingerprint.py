"""What a converted snapshot held, file by file, and whether it still holds it.

A snapshot is read-only once converted: its iteration's model, manifest and hashes describe
those files. Snakemake cannot see an edit inside a snapshot (the rule's input is the folder,
whose time does not change when a file in it does, and ``rsync -t`` keeps file times), so the
conversion records every file's stat and content hash in procdata, and every start-up compares
the snapshot with that record: a stat walk, re-hashing only files whose stat differs.

Nothing under the snapshot (rawdata) is ever written; only the record in procdata is.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from iterseg.errors import SnapshotError
from iterseg.paths import iteration_dir
from iterseg.rawdata.discovery import Snapshot
from iterseg.records import RecordError, SnapshotFiles, read_record, write_json

logger = logging.getLogger(__name__)

SNAPSHOT_RECORD = "snapshot_files.json"
"""File name of the record in the snapshot's ``converted`` folder."""
# iterseg.convert.snapshot.CASES_FILE; not imported: that module is heavy at start-up
CASES_FILE = "cases.json"
RECORD_VERSION = 1
SHOWN_PER_SNAPSHOT = 10  # files listed per changed snapshot; the rest are counted

ChangeKind = Literal["changed", "added", "removed"]


@dataclass(frozen=True)
class FileChange:
    """One file of a converted snapshot that differs from what its conversion read."""

    path: str
    """Relative to the snapshot folder, ``/``-separated."""
    kind: ChangeKind


def converted_dir(procdata: Path, snapshot: Snapshot) -> Path:
    """``procdata/<dataset>/<date>__<dataset>/converted``: where the snapshot's record lives."""
    return iteration_dir(procdata, snapshot.dataset, snapshot.date) / "converted"


# Written by file browsers on their own (Windows thumbnails, folder settings): never content.
OS_JUNK = frozenset({"Thumbs.db", "desktop.ini", "Desktop.ini"})


def _is_file(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file()
    except OSError:  # a link loop or a dangling link: not a file conversion could read either
        return False


def _walk(snapshot: Path) -> dict[str, os.stat_result]:
    """Every non-hidden file below ``snapshot`` with its stat, as conversion finds them.

    The same files ``dicom_series.dicom_files`` reads: hidden files (name starting with ".")
    are skipped, hidden folders are not; symlinks to files count (stat of the target), links
    to folders are not followed (as ``Path.rglob``).
    """
    found: dict[str, os.stat_result] = {}
    pending = [(str(snapshot), "")]  # str, not Path: this loop is most of a start-up check
    while pending:
        folder, prefix = pending.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append((entry.path, f"{prefix}{entry.name}/"))
                elif not entry.name.startswith(".") and entry.name not in OS_JUNK and _is_file(entry):
                    found[prefix + entry.name] = entry.stat()
    return found


def _stat_fields(st: os.stat_result) -> dict[str, int]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hash(snapshot: Path, rel: str) -> str:
    try:
        return _sha256(snapshot / rel)
    except OSError as exc:
        raise SnapshotError(
            f"{snapshot / rel}: cannot be read to compare it with its conversion ({exc.strerror}); "
            "make it readable again (snapshots are read-only once converted, not unreadable)."
        ) from exc


def _write_record(record: Path, snapshot: Path, files: dict[str, dict[str, Any]]) -> None:
    """Write the record atomically (temporary file beside it, then rename); never into rawdata."""
    if record.resolve().is_relative_to(snapshot.resolve()):
        raise ValueError(f"{record}: the record of a snapshot must not be written inside it ({snapshot})")
    # indent 1: the record lists every file of the snapshot, and is read at every start-up
    write_json(record, SnapshotFiles(RECORD_VERSION, str(snapshot), files), indent=1)


def record_snapshot(snapshot: Path, record: Path) -> None:
    """Record every file of ``snapshot``: relative path, size, times, inode and sha256.

    Parameters
    ----------
    snapshot
        ``rawdata/<dataset>/<date>__<dataset>``; only read.
    record
        The JSON file to write (atomically), ``converted/snapshot_files.json`` in procdata.

    """
    files = {
        rel: {**_stat_fields(st), "sha256": _hash(snapshot, rel)}
        for rel, st in sorted(_walk(snapshot).items())
    }
    _write_record(record, snapshot, files)
    logger.info("%s: recorded %d file(s) in %s", snapshot.name, len(files), record)


def _read_record(record: Path, fix: str) -> dict[str, dict[str, Any]]:
    """The files of ``record``; FileNotFoundError when there is none, SnapshotError when unreadable."""
    if not record.is_file():
        raise FileNotFoundError(record)
    try:
        data = read_record(record, SnapshotFiles)
    except RecordError as exc:
        if not record.exists():  # removed since: a job is converting the snapshot again
            raise FileNotFoundError(record) from exc
        raise SnapshotError(f"{record}: unreadable snapshot record ({exc}); {fix}") from exc
    if data.version != RECORD_VERSION:
        raise SnapshotError(f"{record}: unreadable snapshot record (version {data.version!r}); {fix}")
    return data.files


def changed_files(snapshot: Path, record: Path) -> list[FileChange]:
    """The files of ``snapshot`` whose content differs from ``record``, in path order.

    A file whose size, mtime, ctime and inode all match the record is taken as unchanged (ctime
    and inode catch an edit whose mtime was put back, and a replacement by rename). A file whose
    stat differs is hashed and reported only if its content differs, so copying or moving the
    project, ``chmod`` or restoring a backup is no change; the record then takes the new stat
    (rewritten atomically), so the next check is a stat walk again.

    Parameters
    ----------
    snapshot
        The snapshot folder; only read.
    record
        Its record, written by :func:`record_snapshot`.

    Raises
    ------
    SnapshotError
        If the record is unreadable, or a file whose stat changed cannot be read.
    FileNotFoundError
        If there is no record (the snapshot is not converted, or being converted again).

    """
    # Racy entries (git's "racily clean"): file times tick coarsely, so an edit within the same
    # tick as the recording leaves its ctime as recorded. Entries not older than the record are hashed.
    written_ns = record.stat().st_mtime_ns
    fix = f"convert the snapshot again (iterseg reconvert <dataset> {snapshot.name.split('__')[0]})"
    files = _read_record(record, fix)
    found = _walk(snapshot)
    changes: list[FileChange] = []
    refreshed = 0
    for rel, old in files.items():
        st = found.get(rel)
        if st is None:
            changes.append(FileChange(rel, "removed"))
            continue
        if (
            st.st_size == old["size"]
            and st.st_mtime_ns == old["mtime_ns"]
            and st.st_ctime_ns == old["ctime_ns"]
            and st.st_ino == old["inode"]
            and old["ctime_ns"] < written_ns
        ):
            continue
        if _hash(snapshot, rel) != old["sha256"]:
            changes.append(FileChange(rel, "changed"))
            continue
        files[rel] = {**_stat_fields(st), "sha256": old["sha256"]}
        refreshed += 1
    changes += [FileChange(rel, "added") for rel in found.keys() - files.keys()]
    if refreshed:
        _write_record(record, snapshot, files)
        logger.info("%s: %d file(s) with new stat but the same content; record updated", snapshot, refreshed)
    return sorted(changes, key=lambda c: c.path)


def _next_snapshot_date(snapshots: Iterable[Snapshot], dataset: str) -> str:
    """Today, or the day after the dataset's newest snapshot if that is later (a new iteration)."""
    newest = max((dt.date.fromisoformat(s.date) for s in snapshots if s.dataset == dataset), default=None)
    today = dt.date.today()
    return (today if newest is None or today > newest else newest + dt.timedelta(days=1)).isoformat()


def _describe(snapshot: Snapshot, changes: Sequence[FileChange]) -> str:
    lines = [f"{snapshot.path}: {len(changes)} file(s) differ from what iteration {snapshot.date} converted:"]
    lines += [f"  {c.kind:<8} {c.path}" for c in changes[:SHOWN_PER_SNAPSHOT]]
    if len(changes) > SHOWN_PER_SNAPSHOT:
        lines.append(f"  ... and {len(changes) - SHOWN_PER_SNAPSHOT} more")
    return "\n".join(lines)


def check_converted_snapshots(snapshots: Sequence[Snapshot], procdata: Path) -> None:
    """Refuse to start if a converted snapshot's files changed since its conversion.

    Parameters
    ----------
    snapshots
        Snapshots of one or more datasets; those never converted (no record) are skipped.
    procdata
        The procdata root (``data/procdata``).

    Raises
    ------
    SnapshotError
        One message: per changed snapshot its files (up to ten) with their kind of change, and the fix.

    """
    changed: list[tuple[Snapshot, list[FileChange]]] = []
    for snap in snapshots:
        try:
            changes = changed_files(snap.path, converted_dir(procdata, snap) / SNAPSHOT_RECORD)
        except FileNotFoundError:  # never converted, or a running job is converting it again
            continue
        if changes:
            changed.append((snap, changes))
    if not changed:
        return
    blocks = [_describe(snap, changes) for snap, changes in changed]
    new_folders = {
        snap.dataset: snap.path.parent / f"{_next_snapshot_date(snapshots, snap.dataset)}__{snap.dataset}"
        for snap, _ in changed
    }
    commands = " and ".join(f"`iterseg reconvert {snap.dataset} {snap.date}`" for snap, _ in changed)
    which = f"iteration {changed[0][0].date}" if len(changed) == 1 else "those iterations"
    raise SnapshotError(
        "\n".join(blocks) + "\nSnapshots are read-only once converted: the models and manifests of "
        f"{which} and later describe the files as they were. Put the change in a new dated snapshot "
        f"(e.g. {', '.join(f'{p}/' for p in new_folders.values())}) and put these files back as they were; "
        f"or, to re-train {which} and every later one on the changed content, run {commands}, "
        "then snakemake again."
    )


def forget_conversion(procdata: Path, dataset: str, date: str) -> list[Path]:
    """Remove a snapshot's ``cases.json`` and record, so that the next run converts it again.

    Snakemake then re-runs that snapshot's conversion and, because its ``cases.json`` is new,
    every step downstream of it: the iteration and every later one.

    Parameters
    ----------
    procdata
        The procdata root (``data/procdata``).
    dataset, date
        The snapshot ``<date>__<dataset>``.

    Returns
    -------
    list[Path]
        The files removed.

    Raises
    ------
    SnapshotError
        If the snapshot was never converted there.

    """
    work = iteration_dir(procdata, dataset, date)
    targets = [work / "converted" / CASES_FILE, work / "converted" / SNAPSHOT_RECORD]
    present = [p for p in targets if p.is_file()]
    if not present:
        raise SnapshotError(
            f"{work / 'converted'}: no conversion of snapshot {date}__{dataset} to redo (no {CASES_FILE}); "
            "check the dataset and date, or run snakemake: it converts the snapshot anyway."
        )
    for path in present:
        path.unlink()
        logger.info("removed %s", path)
    later = sorted(
        p.name.split("__")[0]
        for p in (procdata / dataset).glob(f"*__{dataset}")
        if p.is_dir() and p.name.split("__")[0] > date
    )
    logger.info(
        "the next snakemake run converts snapshot %s__%s again, as its files are now, and re-runs "
        "iteration %s%s",
        date,
        dataset,
        date,
        f" and the later one(s) {', '.join(later)}" if later else "",
    )
    return present
