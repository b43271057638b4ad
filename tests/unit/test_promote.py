import json
import os
from pathlib import Path

import pytest
from iterseg.errors import PromotionError
from iterseg.release.gate import decide
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
    assert settle(tmp_path, "2026-01-01", True, "first").promoted
    gated = settle(tmp_path, "2026-02-01", False, "Dice dropped")
    assert gated.to_json() == {"promoted": False, "reason": "Dice dropped", "latest_before": "2026-01-01"}
    assert current_latest(tmp_path) == "2026-01-01"
    # re-running the step (e.g. after a config edit) neither re-gates nor moves latest
    again = settle(tmp_path, "2026-02-01", True, "would pass now")
    assert again.promoted is False and again.reason == "Dice dropped"
    assert list(again.to_json()) == ["promoted", "reason", "decided", "latest_before"]
    assert current_latest(tmp_path) == "2026-01-01"
    rollback_target = settle(tmp_path, "2026-01-01", True, "again")
    assert rollback_target.reason == "first"
    actions = [json.loads(x)["action"] for x in (tmp_path / "latest_history.jsonl").read_text().splitlines()]
    assert actions == ["promote", "gated"]


def _case(case_id: str, split: str) -> dict:
    return {
        "case_id": case_id,
        "patient_id": f"P{case_id}",
        "split": split,
        "change": "new",
        "study_uid": "1.2",
        "image_series_uid": "1.2.3",
        "image_sop_uids": ["1.2.3.1"],
        "image_files": ["ct/1.dcm"],
        "image_hash": "ab",
        "annotation_kind": "SEG",
        "annotation_series_uid": "1.2.4",
        "annotation_sop_uids": ["1.2.4.1"],
        "annotation_files": ["seg.dcm"],
        "annotation_hash": "cd",
        "snapshot": "2026-01-01",
        "annotation_datetime": "20260101",
        "why": "only annotation",
        "superseded": [],
        "labels_present": ["liver"],
        "missing_rois": [],
        "partial_labels": [],
        "conversion": "converted",
        "reused_from": None,
        "key": "k",
        "raw_image": f"imagesTr/{case_id}_0000.nii.gz",
        "raw_label": f"labelsTr/{case_id}.nii.gz",
    }


def iteration_inputs(root: Path, date: str) -> dict[str, Path]:
    """The records one promote step reads, for ``results/<date>`` under ``root``."""
    work = root / "procdata" / date
    plans = work / "nnUNet_preprocessed" / "Dataset001_x" / "nnUNetPlans.json"
    plans.parent.mkdir(parents=True)
    plans.write_text('{"plans": 1}')
    plan = {
        "dataset_id": 1, "dataset_name": "Dataset001_x", "plans": "nnUNetPlans", "configuration": "3d",
        "plans_source": None, "architecture": {}, "patch_size": [8, 8, 8], "spacing": [1.0, 1.0, 1.0],
    }  # fmt: skip
    files = {"plan_record": work / "planned.json", "assembled": work / "assembled.json"}
    files["plan_record"].write_text(json.dumps(plan))
    assembled = {
        "dataset_name": "Dataset001_x",
        "raw": str(work / "nnUNet_raw/Dataset001_x"),
        "converted": [],
        "labels": {"background": 0, "liver": 1},
        "cases": ["a"],
        "test_cases": ["b"],
        "test_set": {"patients": ["Pb"], "chosen_at": "2026-01-01", "rule": "fraction"},
        "summary": {"train": 1, "test": 1, "new": 2, "refined": 0, "converted": 2, "reused": 0},
        "records": [_case("a", "train"), _case("b", "test")],
    }
    files["assembled"].write_text(json.dumps(assembled))
    checkpoint = work / "checkpoint_final.pth"
    checkpoint.write_bytes(b"x")
    files["fold"] = work / "fold_0.json"
    files["fold"].write_text(
        json.dumps({"fold": "0", "trainer": "T", "checkpoint": str(checkpoint), "pretrained": None,
                    "epochs": 1, "initial_lr": None, "seconds": 1.0})
    )  # fmt: skip
    out = root / "results" / date
    out.mkdir(parents=True)
    files["predictions"] = out / "predictions.json"
    prediction = {"case_id": "c", "patient_id": "Pc", "series_uid": "1.2", "label": "labels/c.nii.gz",
                  "seg": None, "voxels_per_label": {"liver": 1}}  # fmt: skip
    files["predictions"].write_text(json.dumps([prediction]))
    files["metrics"] = out / "test_metrics.json"
    files["metrics"].write_text(
        json.dumps({"tolerance_mm": 2.0, "folds": ["0"], "labels": {"liver": 1}, "cases": {}, **_scored(0.9)})
    )
    files["effort"] = out / "annotation_effort.json"
    files["effort"].write_text(json.dumps({"cases": [], "summary": {"cases": 0}}))
    files["roi"] = root / "roi.yaml"
    files["roi"].write_text("liver: {}\n")
    return files


def test_release_iteration_writes_the_manifest_and_its_summary(tmp_path: Path) -> None:
    from iterseg.records import IterationSummary, Manifest, read_json, read_record
    from iterseg.release.iteration import release_iteration

    summaries = []
    for date, previous in (("2026-01-01", None), ("2026-02-01", tmp_path / "iteration.json")):
        files = iteration_inputs(tmp_path, date)
        summary = release_iteration(
            results=tmp_path / "results", iteration=date, plan_record=files["plan_record"],
            assembled=files["assembled"], fold_records=[files["fold"]], predictions=files["predictions"],
            test_metrics=files["metrics"], roi_yaml=files["roi"], config={"a": 1}, previous=previous,
            effort=files["effort"], max_dice_drop=0.02,
        )  # fmt: skip
        (tmp_path / "iteration.json").write_text(json.dumps(summary.to_json()))
        summaries.append(summary)
    assert [s.promoted for s in summaries] == [True, True]
    assert current_latest(tmp_path / "results") == "2026-02-01"
    assert read_record(tmp_path / "iteration.json", IterationSummary) == summaries[1]
    assert list(summaries[1].to_json()) == [
        "iteration", "dataset_name", "training_cases", "promoted", "reason", "manifest",
    ]  # fmt: skip
    data = read_json(Path(summaries[1].manifest))
    assert list(data) == [
        "iteration", "dataset_name", "parent", "summary", "labels", "test_set", "cases", "config",
        "config_sha256", "roi_yaml", "versions", "plans", "folds", "test_metrics", "predictions", "skipped",
        "annotation_effort", "promotion",
    ]  # fmt: skip
    assert data["parent"] == {"iteration": "2026-01-01", "checkpoints": {"0": None}}
    assert data["plans"]["planner"] == "ExperimentPlanner"  # a planned.json older than nnunet.planner
    assert data["folds"][0]["status"] == "finished" and data["annotation_effort"]["summary"] == {"cases": 0}
    assert data["promotion"]["latest_before"] == "2026-01-01"
    again = read_record(Path(summaries[1].manifest), Manifest).to_json()
    assert again == data and list(again) == list(data)  # round trip, key order too
