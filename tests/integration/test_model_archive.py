"""A promoted model out as one archive and in as a folder prediction uses: no training needed.

The iteration is the planned demo's first with one fold of random weights (``random_fold_model``)
and a manifest written here; what the archive checks refuse is built by rewriting its zip.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from iterseg.cli import main
from iterseg.errors import ModelArchiveError
from iterseg.records import Manifest, ModelCard, PlanRecord, Promotion, read_record, write_record
from iterseg.release.installed import load_installed_model
from iterseg.release.model_archive import ARCHIVE_MEMBERS, export_model, install_model
from iterseg.release.model_card import NNUNET_ZIP
from nnunet_models import TRAINER, random_fold_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DATE, GATED = "2026-01-15", "2026-02-01"
NAME = "Dataset901_demo_20260115"
MODEL = f"{TRAINER}__nnUNetPlans__3d_fullres"


def _manifest(roi: Path, promotion: Promotion, labels: dict[str, int]) -> Manifest:
    cases = [{"case_id": f"P00{k}_x", "patient_id": f"P00{k}", "split": "train"} for k in (1, 2, 5)]
    return Manifest(
        iteration=DATE,
        dataset_name=NAME,
        parent={},
        summary={"train": 3, "test": 1},
        labels=labels,
        test_set={"patients": ["P003"]},
        cases=(*cases, {"case_id": "P003_x", "patient_id": "P003", "split": "test"}),
        config={"datasets": {"demo": {"modality": "CT"}}, "nnunet": {"inference": {"tile_step_size": 0.5}}},
        config_sha256="0" * 64,
        roi_yaml={"path": str(roi), "sha256": hashlib.sha256(roi.read_bytes()).hexdigest()},
        versions={"iterseg": "0.1.0", "nnunetv2": "2.8.1"},
        plans={"planner": "ExperimentPlanner"},
        folds=({"fold": "0", "trainer": TRAINER, "status": "finished"},),
        test_metrics={
            "tolerance_mm": 2.0,
            "summary": {"liver": {"dice_mean": 0.9, "nsd_mean": 0.95, "cases": 1}},
        },
        predictions=(),
        promotion=promotion,
    )


@pytest.fixture(scope="module")
def project(planned_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose iteration DATE is promoted (one random fold) and GATED was gated out."""
    root = tmp_path_factory.mktemp("models_project")
    roi = root / "config/roi_demo.yaml"
    roi.parent.mkdir()
    shutil.copy(planned_demo / "config/roi_demo.yaml", roi)
    work_from = planned_demo / f"data/procdata/demo/{DATE}__demo"
    work = root / f"data/procdata/demo/{DATE}__demo"
    work.mkdir(parents=True)
    shutil.copy(work_from / "planned.json", work / "planned.json")
    pre = work_from / "nnUNet_preprocessed" / NAME
    model = random_fold_model(pre, work / "nnUNet_results" / NAME, (0,))
    shutil.copy(pre / "dataset_fingerprint.json", model / "dataset_fingerprint.json")
    fold = model / "fold_0"
    (fold / "validation").mkdir()
    (fold / "validation/summary.json").write_text("{}")
    (fold / "validation/P001_x.nii.gz").write_bytes(b"a cross-validation prediction")  # never exported
    (fold / "progress.png").write_bytes(b"png")
    shutil.copy(fold / "checkpoint_final.pth", fold / "checkpoint_best.pth")  # never exported
    labels = json.loads((model / "dataset.json").read_text())["labels"]
    results = root / "data/results/demo"
    write_record(results / DATE / "manifest.json", _manifest(roi, Promotion(True, "passed", None), labels))
    gated = _manifest(roi, Promotion(False, "test mean Dice 0.5 vs 0.9 of latest", DATE), labels)
    write_record(results / GATED / "manifest.json", gated)
    (results / "latest").symlink_to(DATE)
    shutil.copytree(planned_demo / "data/rawdata/demo/inbox/P101", root / "inbox/P101")
    return root


@pytest.fixture(scope="module")
def archive(project: Path) -> Path:
    return export_model(results=project / "data/results", procdata=project / "data/procdata", dataset="demo")


def _rezip(
    source: Path,
    target: Path,
    replace: dict[str, bytes] | None = None,
    extra: Sequence[tuple[zipfile.ZipInfo | str, bytes]] = (),
) -> Path:
    """``source``'s members with ``replace``'s contents, then ``extra``."""
    replace = replace or {}
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name": a duplicate is one of the archives we build
        for name in old.namelist():
            new.writestr(name, replace.get(name, old.read(name)))
        for info, data in extra:
            new.writestr(info, data)
    return target


def _card(archive: Path) -> dict:
    with zipfile.ZipFile(archive) as zipped:
        return json.loads(zipped.read("model_card.json"))


def test_export_holds_nnunets_zip_the_card_and_the_roi_yaml(project: Path, archive: Path) -> None:
    assert archive == project / f"data/results/demo/{DATE}/model_demo_{DATE}.zip"  # latest's, by default
    assert not [p for p in archive.parent.iterdir() if "partial" in p.name]
    with zipfile.ZipFile(archive) as zipped:
        assert zipped.namelist() == list(ARCHIVE_MEMBERS)
        inner = zipped.read(NNUNET_ZIP)
        assert zipped.read("roi.yaml") == (project / "config/roi_demo.yaml").read_bytes()
        markdown = zipped.read("MODEL_CARD.md").decode()
    card = ModelCard.from_json(_card(archive))
    assert card.nnunet_zip_sha256 == hashlib.sha256(inner).hexdigest()
    assert (card.dataset, card.iteration, card.dataset_name, card.trainer, card.folds) == (
        "demo",
        DATE,
        NAME,
        TRAINER,
        ("0",),
    )
    assert card.training_case_ids == ("P001_x", "P002_x", "P005_x") and card.training_cases == 3
    assert card.test_patients == ("P003",) and card.test_metrics["liver"]["dice_mean"] == 0.9
    assert card.plan_record == read_record(
        project / f"data/procdata/demo/{DATE}__demo/planned.json", PlanRecord
    )
    assert (card.planner, card.promotion_reason, card.modality) == ("ExperimentPlanner", "passed", "CT")
    assert (
        "| liver | 0.900 | 0.950 | 1 |" in markdown
        and f"iterseg predict --model data/models/demo/{DATE}" in markdown
    )
    (project / "inner.zip").write_bytes(inner)
    with zipfile.ZipFile(project / "inner.zip") as zipped:
        names = set(zipped.namelist())
    assert f"{NAME}/{MODEL}/fold_0/checkpoint_final.pth" in names and f"{NAME}/{MODEL}/plans.json" in names
    assert not [n for n in names if "checkpoint_best" in n or n.endswith(".nii.gz")], names


def test_an_iteration_not_promoted_is_refused_naming_its_manifest(project: Path, tmp_path: Path) -> None:
    manifest = project / f"data/results/demo/{GATED}/manifest.json"
    with pytest.raises(ModelArchiveError, match="was not promoted") as refused:
        export_model(
            results=project / "data/results",
            procdata=project / "data/procdata",
            dataset="demo",
            date=GATED,
            out=tmp_path / "m.zip",
        )
    assert str(manifest) in str(refused.value) and "iterseg status demo" in str(refused.value)
    assert "test mean Dice 0.5" in str(refused.value)  # the gate's reason
    command = [
        "export-model",
        "demo",
        GATED,
        "--results",
        str(project / "data/results"),
        "--procdata",
        str(project / "data/procdata"),
        "--out",
        str(tmp_path / "m.zip"),
    ]
    assert main(command) == 2
    assert list(tmp_path.iterdir()) == []


def test_a_changed_roi_yaml_is_refused(project: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    shutil.copytree(project / "data/results", results, symlinks=True)
    manifest = read_record(results / f"demo/{DATE}/manifest.json", Manifest)
    changed = tmp_path / "roi.yaml"
    changed.write_text((project / "config/roi_demo.yaml").read_text() + "spleen:\n  - spleen\n")
    moved = replace(manifest, roi_yaml={**manifest.roi_yaml, "path": str(changed)})
    write_record(results / f"demo/{DATE}/manifest.json", moved)
    with pytest.raises(ModelArchiveError, match="changed since iteration") as refused:
        export_model(
            results=results, procdata=project / "data/procdata", dataset="demo", out=tmp_path / "m.zip"
        )
    assert str(changed) in str(refused.value) and "restore" in str(refused.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results", "roi.yaml"]


def test_the_installed_model_predicts_as_its_iteration(project: Path, archive: Path, tmp_path: Path) -> None:
    into = tmp_path / "models"
    assert main(["install-model", str(archive), "--into", str(into)]) == 0
    installed = into / "demo" / DATE
    assert [p.name for p in into.iterdir()] == ["demo"]
    assert [p.name for p in (into / "demo").iterdir()] == [DATE]  # no staging folder left
    model = load_installed_model(installed)
    assert (model.work, model.trainer, model.folds, model.modality) == (installed, TRAINER, ("0",), "CT")
    assert model.description == f"iterseg demo {DATE}"
    work = project / f"data/procdata/demo/{DATE}__demo"
    assert read_record(model.plan_record, PlanRecord) == read_record(work / "planned.json", PlanRecord)
    assert model.roi_yaml.read_bytes() == (project / "config/roi_demo.yaml").read_bytes()
    common = ["--device", "cpu", "--inbox", str(project / "inbox")]
    iteration = [
        "predict",
        "--work",
        str(work),
        "--plan-record",
        str(work / "planned.json"),
        "--trainer",
        TRAINER,
        "--folds",
        "0",
        "--description",
        "d",
        "--roi-yaml",
        str(project / "config/roi_demo.yaml"),
    ]
    assert (
        main([*iteration, *common, "--out", str(tmp_path / "a"), "--output", str(tmp_path / "a.json")]) == 0
    )
    assert (
        main(
            [
                "predict",
                "--model",
                str(installed),
                *common,
                "--out",
                str(tmp_path / "b"),
                "--output",
                str(tmp_path / "b.json"),
            ]
        )
        == 0
    )
    a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / x / "labels/P101.nii.gz"))) for x in "ab")
    assert np.array_equal(a, b)
    assert json.loads((tmp_path / "b/predictions.json").read_text())[0]["case_id"] == "P101"


def test_predict_takes_a_model_or_an_iteration_not_both(project: Path, tmp_path: Path) -> None:
    common = [
        "--inbox",
        str(project / "inbox"),
        "--out",
        str(tmp_path / "o"),
        "--output",
        str(tmp_path / "r"),
    ]
    assert main(["predict", "--model", str(tmp_path), "--work", str(tmp_path), *common]) == 2
    assert main(["predict", "--work", str(tmp_path), "--trainer", "t", *common]) == 2  # no plan record, folds
    assert main(["predict", "--model", str(tmp_path), *common]) == 2  # no model card there
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()


def test_refuses_to_replace_an_installed_model_without_force(archive: Path, tmp_path: Path) -> None:
    into = tmp_path / "models"
    installed = install_model(archive=archive, into=into)
    (installed / "marker").write_text("the earlier install")
    with pytest.raises(ModelArchiveError, match="installed there already; pass --force"):
        install_model(archive=archive, into=into)
    assert main(["install-model", str(archive), "--into", str(into)]) == 2
    assert (installed / "marker").is_file()
    assert main(["install-model", str(archive), "--into", str(into), "--force"]) == 0
    assert not (installed / "marker").exists() and load_installed_model(installed).folds == ("0",)
    assert sorted(p.name for p in (into / "demo").iterdir()) == [DATE]  # no staging or old copy left
    assert sorted(p.name for p in into.iterdir()) == ["demo"]


def _symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    ("member", "why"),
    [
        ("../evil.txt", "'..' in its path"),
        ("/tmp/evil.txt", "absolute path"),
        ("a\\..\\..\\evil", "'..'"),
        (_symlink("link"), "symbolic link"),
        ("roi.yaml", "stored twice"),
    ],
)
def test_unsafe_members_are_refused_before_anything_is_written(
    archive: Path, tmp_path: Path, member: zipfile.ZipInfo | str, why: str
) -> None:
    bad = _rezip(archive, tmp_path / "bad.zip", extra=[(member, b"/etc/passwd")])
    into = tmp_path / "models"
    with pytest.raises(ModelArchiveError, match="refused") as refused:
        install_model(archive=bad, into=into)
    assert why in str(refused.value) and str(bad) in str(refused.value)
    assert list(into.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zip", "models"]


def test_a_checksum_differing_from_the_card_is_refused(archive: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(archive) as zipped:
        inner = zipped.read(NNUNET_ZIP)
    (tmp_path / "inner.zip").write_bytes(inner)
    with zipfile.ZipFile(tmp_path / "inner.zip", "a") as zipped:  # a valid zip, one member more
        zipped.writestr(f"{NAME}/{MODEL}/fold_0/extra.txt", "x")
    altered = _rezip(archive, tmp_path / "altered.zip", {NNUNET_ZIP: (tmp_path / "inner.zip").read_bytes()})
    into = tmp_path / "models"
    with pytest.raises(ModelArchiveError, match=f"{NNUNET_ZIP} has sha256 .* but its model card says"):
        install_model(archive=altered, into=into)
    assert list(into.iterdir()) == []
    roi = _rezip(archive, tmp_path / "roi.zip", {"roi.yaml": b"liver:\n  - spleen\n"})
    with pytest.raises(ModelArchiveError, match=r"roi\.yaml has sha256"):
        install_model(archive=roi, into=into)
    assert list(into.iterdir()) == []


def test_an_unsafe_member_of_nnunets_zip_is_refused_even_with_a_matching_card(
    archive: Path, tmp_path: Path
) -> None:
    with zipfile.ZipFile(archive) as zipped:
        (tmp_path / "inner.zip").write_bytes(zipped.read(NNUNET_ZIP))
    with zipfile.ZipFile(tmp_path / "inner.zip", "a") as zipped:
        zipped.writestr("../../escaped.txt", "x")
    inner = (tmp_path / "inner.zip").read_bytes()
    card = {**_card(archive), "nnunet_zip_sha256": hashlib.sha256(inner).hexdigest()}
    forged = _rezip(
        archive, tmp_path / "forged.zip", {NNUNET_ZIP: inner, "model_card.json": json.dumps(card).encode()}
    )
    into = tmp_path / "models"
    with pytest.raises(ModelArchiveError, match=r"\(nnunet_model.zip\): refused"):
        install_model(archive=forged, into=into)
    assert list(into.iterdir()) == [] and not (tmp_path / "escaped.txt").exists()


def test_what_is_no_model_archive_is_refused(archive: Path, tmp_path: Path) -> None:
    (tmp_path / "truncated.zip").write_bytes(archive.read_bytes()[:5000])
    with pytest.raises(ModelArchiveError, match="truncated or corrupt"):
        install_model(archive=tmp_path / "truncated.zip", into=tmp_path / "models")
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as zipped:
        zipped.writestr("notes.txt", "hello")
    with pytest.raises(ModelArchiveError, match="no model archive of `iterseg export-model`"):
        install_model(archive=other, into=tmp_path / "models")
    newer = _rezip(
        archive,
        tmp_path / "newer.zip",
        {"model_card.json": json.dumps({**_card(archive), "format": 99}).encode()},
    )
    with pytest.raises(ModelArchiveError, match="newer than the 1 this iterseg reads"):
        install_model(archive=newer, into=tmp_path / "models")
    assert list((tmp_path / "models").iterdir()) == []
