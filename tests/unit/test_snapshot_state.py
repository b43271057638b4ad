"""Edits inside a converted snapshot are found from its record; moves, copies and chmod are not edits."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import tree_digest
from iterseg.cli import main
from iterseg.errors import SnapshotError
from iterseg.rawdata.discovery import Snapshot, discover_snapshots
from iterseg.rawdata.fingerprint import (
    SNAPSHOT_RECORD,
    FileChange,
    changed_files,
    check_converted_snapshots,
    converted_dir,
    forget_conversion,
    record_snapshot,
)

pytestmark = pytest.mark.unit

FILES = {
    "P001/CT/IM0001": b"ct slice 1" * 50,
    "P001/CT/IM0002": b"ct slice 2" * 50,
    "P001/seg.dcm": b"segmentation",
    "P002/rtstruct.dcm": b"structure set",
}


def make_snapshot(root: Path, date: str = "2026-01-15", dataset: str = "demo") -> Path:
    snap = root / "rawdata" / dataset / f"{date}__{dataset}"
    for rel, data in FILES.items():
        (snap / rel).parent.mkdir(parents=True, exist_ok=True)
        (snap / rel).write_bytes(data)
    return snap


def recorded(tmp_path: Path) -> tuple[Path, Path]:
    snap = make_snapshot(tmp_path)
    record = tmp_path / "procdata" / SNAPSHOT_RECORD
    record_snapshot(snap, record)
    return snap, record


def entries(record: Path) -> dict[str, dict[str, object]]:
    files: dict[str, dict[str, object]] = json.loads(record.read_text())["files"]
    return files


def test_record_holds_every_file_with_stat_and_hash(tmp_path: Path) -> None:
    snap, record = recorded(tmp_path)
    files = entries(record)
    assert sorted(files) == sorted(FILES)
    st = (snap / "P001/seg.dcm").stat()
    assert files["P001/seg.dcm"] == {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "inode": st.st_ino,
        "sha256": hashlib.sha256(b"segmentation").hexdigest(),
    }
    assert changed_files(snap, record) == []


@pytest.mark.parametrize("settled", [False, True], ids=["same-tick", "later"])
def test_edit_in_place_with_mtime_put_back_is_found(tmp_path: Path, settled: bool) -> None:
    """Found by the ctime (later), or by hashing what is not older than the record (same tick)."""
    snap, record = recorded(tmp_path)
    if settled:
        time.sleep(0.05)
        record_snapshot(snap, record)  # newer than every file: only the stat tells an edit
        time.sleep(0.05)
    path = snap / "P001/CT/IM0002"
    before = path.stat()
    path.write_bytes(b"CT SLICE 2" * 50)  # same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_mtime_ns == before.st_mtime_ns
    assert changed_files(snap, record) == [FileChange("P001/CT/IM0002", "changed")]


def test_replace_by_rename_with_mtime_kept_is_found(tmp_path: Path) -> None:
    """What ``rsync -t`` does: a new file beside the old one, its mtime set, renamed over it."""
    snap, record = recorded(tmp_path)
    path = snap / "P001/seg.dcm"
    before = path.stat()
    partial = path.with_name(".seg.dcm.Xy12")
    partial.write_bytes(b"SEGMENTATION")
    os.utime(partial, ns=(before.st_atime_ns, before.st_mtime_ns))
    partial.rename(path)
    assert path.stat().st_ino != before.st_ino
    assert changed_files(snap, record) == [FileChange("P001/seg.dcm", "changed")]


def test_replace_by_identical_copy_is_not_a_change(tmp_path: Path) -> None:
    snap, record = recorded(tmp_path)
    path = snap / "P001/seg.dcm"
    partial = path.with_name(".seg.dcm.tmp")
    partial.write_bytes(FILES["P001/seg.dcm"])
    partial.rename(path)
    assert changed_files(snap, record) == []


def test_deleted_and_added_files_are_found(tmp_path: Path) -> None:
    snap, record = recorded(tmp_path)
    (snap / "P002/rtstruct.dcm").unlink()
    (snap / "P003").mkdir()
    (snap / "P003/new.dcm").write_bytes(b"new case")
    assert changed_files(snap, record) == [
        FileChange("P002/rtstruct.dcm", "removed"),
        FileChange("P003/new.dcm", "added"),
    ]


def test_chmod_is_not_a_change_and_the_record_takes_the_new_stat(tmp_path: Path) -> None:
    snap, record = recorded(tmp_path)
    path = snap / "P001/CT/IM0001"
    path.chmod(0o444)
    assert changed_files(snap, record) == []
    assert entries(record)["P001/CT/IM0001"]["ctime_ns"] == path.stat().st_ctime_ns


def test_copied_tree_is_not_a_change_and_the_next_check_is_a_stat_walk(tmp_path: Path) -> None:
    snap, record = recorded(tmp_path)
    copy = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "rawdata", copy / "rawdata")  # new inodes, mtimes kept (copy2)
    shutil.copytree(tmp_path / "procdata", copy / "procdata")
    copied_snap, copied_record = copy / snap.relative_to(tmp_path), copy / record.relative_to(tmp_path)
    original = record.read_bytes()
    time.sleep(0.05)  # past the file system's time tick: the refreshed record is newer than the files
    assert changed_files(copied_snap, copied_record) == []
    files = entries(copied_record)
    for rel in FILES:
        st = (copied_snap / rel).stat()
        assert (files[rel]["inode"], files[rel]["ctime_ns"]) == (st.st_ino, st.st_ctime_ns)
    assert record.read_bytes() == original  # the original project's record is its own
    # every stat now matches: the second check neither hashes nor rewrites the record
    written = copied_record.stat()
    assert changed_files(copied_snap, copied_record) == []
    after = copied_record.stat()
    assert (after.st_ino, after.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)


def test_hidden_files_are_ignored(tmp_path: Path) -> None:
    snap = make_snapshot(tmp_path)
    (snap / ".DS_Store").write_bytes(b"finder")
    (snap / "P001/._IM0001").write_bytes(b"resource fork")
    (snap / ".cache").mkdir()
    (snap / ".cache/IM9").write_bytes(b"read by conversion: only the file's own name counts")
    record = tmp_path / "procdata" / SNAPSHOT_RECORD
    record_snapshot(snap, record)
    assert sorted(entries(record)) == sorted([*FILES, ".cache/IM9"])
    (snap / ".DS_Store").write_bytes(b"finder, rewritten")
    (snap / "P001/._IM0001").unlink()
    (snap / "P002/.rsync-partial").write_bytes(b"half a file")
    assert changed_files(snap, record) == []


def test_record_is_never_written_into_the_snapshot(tmp_path: Path) -> None:
    snap = make_snapshot(tmp_path)
    with pytest.raises(ValueError, match="must not be written inside it"):
        record_snapshot(snap, snap / SNAPSHOT_RECORD)
    assert not (snap / SNAPSHOT_RECORD).exists()


def converted_project(tmp_path: Path) -> tuple[list[Snapshot], Path]:
    for date in ("2026-01-15", "2026-03-02"):
        make_snapshot(tmp_path, date)
    snaps = discover_snapshots(tmp_path / "rawdata", "demo")
    procdata = tmp_path / "procdata"
    for snap in snaps:
        record_snapshot(snap.path, converted_dir(procdata, snap) / SNAPSHOT_RECORD)
        (converted_dir(procdata, snap) / "cases.json").write_text("[]")
    return snaps, procdata


def test_check_lists_changed_files_and_the_fix(tmp_path: Path) -> None:
    snaps, procdata = converted_project(tmp_path)
    make_snapshot(tmp_path, "2026-05-01")  # not converted yet: not checked
    snaps = discover_snapshots(tmp_path / "rawdata", "demo")
    first = snaps[0].path
    for i in range(12):
        (first / f"P009/IM{i:02d}").parent.mkdir(exist_ok=True)
        (first / f"P009/IM{i:02d}").write_bytes(b"x")
    (first / "P002/rtstruct.dcm").unlink()
    before = tree_digest(tmp_path / "rawdata")
    with pytest.raises(SnapshotError) as exc:
        check_converted_snapshots(snaps, procdata)
    message = str(exc.value)
    assert f"{first}: 13 file(s) differ from what iteration 2026-01-15 converted:" in message
    assert "  added    P009/IM00" in message
    assert "  removed  P002/rtstruct.dcm" in message
    assert "... and 3 more" in message
    assert "2026-03-02__demo" not in message.split("Snapshots are")[0]  # unchanged: not listed
    assert "`iterseg reconvert demo 2026-01-15`" in message
    assert "Put the change in a new dated snapshot (e.g. " in message
    suggested = message.split("(e.g. ")[1].split("/)")[0]
    assert Path(suggested).parent == first.parent
    assert Path(suggested).name > "2026-05-01__demo"  # after every snapshot: a new iteration
    assert tree_digest(tmp_path / "rawdata") == before


def test_check_passes_when_nothing_changed_or_nothing_converted(tmp_path: Path) -> None:
    snaps, procdata = converted_project(tmp_path)
    check_converted_snapshots(snaps, procdata)
    check_converted_snapshots(snaps, tmp_path / "no-procdata")


def test_reconvert_forgets_the_conversion_and_the_check_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    snaps, procdata = converted_project(tmp_path)
    (snaps[0].path / "P001/seg.dcm").write_bytes(b"refined")
    with pytest.raises(SnapshotError):
        check_converted_snapshots(snaps, procdata)
    assert main(["reconvert", "demo", "2026-01-15", "--procdata", str(procdata)]) == 0
    gone = converted_dir(procdata, snaps[0])
    assert not (gone / "cases.json").exists() and not (gone / SNAPSHOT_RECORD).exists()
    assert (converted_dir(procdata, snaps[1]) / "cases.json").exists()
    err = capsys.readouterr().err
    assert f"removed {gone / 'cases.json'}" in err
    assert "re-runs iteration 2026-01-15 and the later one(s) 2026-03-02" in err
    check_converted_snapshots(snaps, procdata)
    with pytest.raises(SnapshotError, match="no conversion of snapshot 2026-01-15__demo to redo"):
        forget_conversion(procdata, "demo", "2026-01-15")
