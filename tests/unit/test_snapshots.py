from pathlib import Path

import pytest
from iterseg.errors import SnapshotError
from iterseg.rawdata.discovery import discover_snapshots, nnunet_dataset_name

pytestmark = pytest.mark.unit


def make(root: Path, *names: str) -> None:
    for name in names:
        (root / name).mkdir(parents=True)


def test_snapshots_sorted_by_date_and_inbox_skipped(tmp_path: Path) -> None:
    make(
        tmp_path / "liver",
        "2026-03-01__liver",
        "2025-12-31__liver",
        "inbox",
        ".imgtools",
        "2026-01-10__liver",
    )
    (tmp_path / "liver" / "notes.txt").write_text("not a folder")
    snaps = discover_snapshots(tmp_path, "liver")
    assert [s.date for s in snaps] == ["2025-12-31", "2026-01-10", "2026-03-01"]
    assert [s.index for s in snaps] == [0, 1, 2]
    assert snaps[1].folder_name == "2026-01-10__liver"
    assert snaps[2].path == tmp_path / "liver" / "2026-03-01__liver"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("2026-1-1__liver", "not a snapshot name"),
        ("latest_scans", "not a snapshot name"),
        ("2026-01-10__lung", "belongs to dataset 'lung'"),
        ("2026-02-30__liver", "not a valid date"),
    ],
)
def test_bad_snapshot_names_name_the_folder_and_the_fix(tmp_path: Path, name: str, expected: str) -> None:
    make(tmp_path / "liver", name)
    with pytest.raises(SnapshotError, match=expected) as info:
        discover_snapshots(tmp_path, "liver")
    assert name in str(info.value)


def test_missing_dataset_folder(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="no such folder"):
        discover_snapshots(tmp_path, "liver")


def test_dataset_names_are_stable_and_bounded() -> None:
    assert nnunet_dataset_name("liver", 101, 0, "2026-01-10") == "Dataset101_liver_20260110"
    assert nnunet_dataset_name("liver", 101, 2, "2026-03-01") == "Dataset103_liver_20260301"
    assert nnunet_dataset_name("liver", 101, 2, "2026-03-01") == nnunet_dataset_name(
        "liver", 101, 2, "2026-03-01"
    )
    with pytest.raises(SnapshotError, match="outside 1-999"):
        nnunet_dataset_name("liver", 998, 2, "2026-03-01")
