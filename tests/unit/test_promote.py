import json
import os
from pathlib import Path

import pytest
from iterseg.errors import PromotionError
from iterseg.promote import current_latest, promote, rollback, status_table

pytestmark = pytest.mark.unit


def test_promote_moves_forward_and_replaces_the_link(tmp_path: Path) -> None:
    for date in ("2026-01-01", "2026-02-01"):
        (tmp_path / date).mkdir()
    assert promote(tmp_path, "2026-01-01")
    assert os.readlink(tmp_path / "latest") == "2026-01-01"  # relative link
    assert promote(tmp_path, "2026-02-01")
    assert current_latest(tmp_path) == "2026-02-01"
    assert (tmp_path / "latest").resolve() == (tmp_path / "2026-02-01").resolve()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".latest")] == []


def test_latest_never_moves_back(tmp_path: Path) -> None:
    for date in ("2026-01-01", "2026-02-01"):
        (tmp_path / date).mkdir()
    promote(tmp_path, "2026-02-01")
    assert not promote(tmp_path, "2026-01-01")
    assert current_latest(tmp_path) == "2026-02-01"


def test_promote_uses_rename_over_the_old_link(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The old link is replaced by rename(2), never removed first."""
    for date in ("2026-01-01", "2026-02-01"):
        (tmp_path / date).mkdir()
    promote(tmp_path, "2026-01-01")
    calls: list[str] = []
    real_unlink = Path.unlink

    def spy_unlink(self: Path, missing_ok: bool = False) -> None:
        calls.append(self.name)
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", spy_unlink)
    monkeypatch.setattr(os, "remove", lambda p: calls.append(str(p)))
    monkeypatch.setattr(os, "unlink", lambda p: calls.append(str(p)))
    promote(tmp_path, "2026-02-01")
    assert "latest" not in calls
    assert current_latest(tmp_path) == "2026-02-01"


def test_real_directory_named_latest_is_refused(tmp_path: Path) -> None:
    (tmp_path / "2026-01-01").mkdir()
    (tmp_path / "latest").mkdir()
    with pytest.raises(PromotionError, match="not a link"):
        promote(tmp_path, "2026-01-01")


def test_missing_iteration_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PromotionError, match="no such iteration"):
        promote(tmp_path, "2026-01-01")


def _finished(root: Path, *dates: str) -> None:
    for date in dates:
        (root / date).mkdir()
        (root / date / "iteration.json").write_text(
            json.dumps(
                {
                    "dataset_name": f"D_{date}",
                    "training_cases": 7,
                    "folds": [{"fold": "0"}],
                    "predictions": [1],
                }
            )
        )


def test_rollback_to_previous_then_to_a_date_and_history(tmp_path: Path) -> None:
    _finished(tmp_path, "2026-01-01", "2026-02-01", "2026-03-01")
    (tmp_path / "2026-04-01").mkdir()  # started, never finished: not a rollback target
    promote(tmp_path, "2026-03-01")
    assert rollback(tmp_path, reason="Dice dropped") == "2026-02-01"
    assert current_latest(tmp_path) == "2026-02-01"
    assert rollback(tmp_path, "2026-03-01") == "2026-03-01"
    with pytest.raises(PromotionError, match="not a finished iteration"):
        rollback(tmp_path, "2026-04-01")
    history = [json.loads(line) for line in (tmp_path / "latest_history.jsonl").read_text().splitlines()]
    assert [(h["action"], h["from"], h["to"]) for h in history] == [
        ("promote", None, "2026-03-01"),
        ("rollback", "2026-03-01", "2026-02-01"),
        ("rollback", "2026-02-01", "2026-03-01"),
    ]
    assert history[1]["reason"] == "Dice dropped"


def test_rollback_without_earlier_iteration_is_refused(tmp_path: Path) -> None:
    _finished(tmp_path, "2026-01-01")
    promote(tmp_path, "2026-01-01")
    with pytest.raises(PromotionError, match="nothing to roll back to"):
        rollback(tmp_path)


def test_status_table_marks_latest(tmp_path: Path) -> None:
    _finished(tmp_path, "2026-01-01", "2026-02-01")
    promote(tmp_path, "2026-02-01")
    rollback(tmp_path)
    lines = status_table(tmp_path).splitlines()
    assert lines[0].split()[:2] == ["date", "nnU-Net"]
    assert lines[1].startswith("2026-01-01") and lines[1].endswith("<- latest")
    assert lines[2].startswith("2026-02-01") and "<- latest" not in lines[2]
    assert "D_2026-02-01" in lines[2]
