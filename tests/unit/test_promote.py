import json
import os
from pathlib import Path

import pytest
from iterseg.errors import PromotionError
from iterseg.release.manifest import decide
from iterseg.release.promote import current_latest, promote, rollback, settle, status_table

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


def _manifest(root: Path, date: str, dice: dict[str, float], promotion: dict) -> None:
    summary = {name: {"dice_mean": value, "nsd_mean": value, "cases": 2} for name, value in dice.items()}
    manifest = {
        "labels": {"background": 0, "liver": 1, "tumour": 2, "ignore": 3},
        "summary": {"train": 5, "test": 2, "new": 5, "refined": 0, "converted": 4, "reused": 3},
        "test_metrics": {"summary": summary},
        "promotion": promotion,
    }
    (root / date / "manifest.json").write_text(json.dumps(manifest))


def test_status_table_shows_counts_dice_and_why(tmp_path: Path) -> None:
    _finished(tmp_path, "2026-01-01", "2026-02-01")
    _manifest(tmp_path, "2026-01-01", {"liver": 0.9, "tumour": 0.5}, {"promoted": True, "reason": "first"})
    _manifest(tmp_path, "2026-02-01", {"liver": 0.8}, {"promoted": False, "reason": "Dice dropped"})
    promote(tmp_path, "2026-02-01")
    rollback(tmp_path)
    lines = status_table(tmp_path).splitlines()
    assert lines[0].split() == [
        "date",
        "train",
        "test",
        "new",
        "refined",
        "converted",
        "skipped",
        "Dice",
        "liver",
        "Dice",
        "tumour",
        "promoted",
    ]
    # "-": manifests written before cases could be skipped do not say
    assert lines[1].split()[:10] == ["2026-01-01", "5", "2", "5", "0", "4/7", "-", "0.900", "0.500", "<-"]
    assert lines[1].endswith("<- latest; yes: first")
    assert lines[2].split()[7:9] == ["0.800", "-"] and lines[2].endswith("no: Dice dropped")


def _fold(tmp_path: Path) -> dict:
    checkpoint = tmp_path / "checkpoint_final.pth"
    checkpoint.write_bytes(b"x")
    return {"fold": "0", "checkpoint": str(checkpoint)}


def _scored(mean: float) -> dict:
    return {"summary": {"mean": {"dice_mean": mean}}}


def test_gate_compares_mean_dice_with_latest(tmp_path: Path) -> None:
    folds = [_fold(tmp_path)]
    latest = {"test_metrics": _scored(0.80)}
    assert decide(folds, _scored(0.79), "2026-01-01", latest, 0.02).promote
    assert decide(folds, _scored(0.85), "2026-01-01", latest, 0.0).promote
    refused = decide(folds, _scored(0.70), "2026-01-01", latest, 0.02)
    assert (
        not refused.promote
        and "0.100 below 0.800" in refused.reason
        and "latest stays on 2026-01-01" in refused.reason
    )
    assert not decide(folds, _scored(0.81), "2026-01-01", latest, -0.05).promote  # a gain is demanded
    assert decide(folds, _scored(0.10), "2026-01-01", latest, None).promote  # gate off
    assert decide(folds, {}, "2026-01-01", latest, 0.02).promote  # no test set
    assert decide(folds, _scored(0.10), None, None, 0.02).promote  # nothing to compare with


def test_gate_refuses_a_missing_fold(tmp_path: Path) -> None:
    folds = [_fold(tmp_path), {"fold": "1", "checkpoint": str(tmp_path / "nope.pth")}]
    decision = decide(folds, _scored(0.9), None, None, 0.02)
    assert not decision.promote and "fold(s) 1" in decision.reason


def test_a_decision_is_taken_once(tmp_path: Path) -> None:
    for date in ("2026-01-01", "2026-02-01"):
        (tmp_path / date).mkdir()
    assert settle(tmp_path, "2026-01-01", True, "first")["promoted"]
    gated = settle(tmp_path, "2026-02-01", False, "Dice dropped")
    assert gated == {"promoted": False, "reason": "Dice dropped", "latest_before": "2026-01-01"}
    assert current_latest(tmp_path) == "2026-01-01"
    # re-running the step (e.g. after a config edit) neither re-gates nor moves latest
    again = settle(tmp_path, "2026-02-01", True, "would pass now")
    assert again["promoted"] is False and again["reason"] == "Dice dropped"
    assert current_latest(tmp_path) == "2026-01-01"
    rollback_target = settle(tmp_path, "2026-01-01", True, "again")
    assert rollback_target["reason"] == "first"
    actions = [json.loads(x)["action"] for x in (tmp_path / "latest_history.jsonl").read_text().splitlines()]
    assert actions == ["promote", "gated"]
