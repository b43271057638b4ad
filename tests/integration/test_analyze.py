"""``iterseg.api.analyze`` and ``iterseg analyze`` without training: one fold of random weights.

The iteration is the planned demo's first with a manifest written here (``random_fold_model``);
its ROI YAML differs from the repository's, so finding the one the manifest records is checked
too. Random weights predict the same labels for the same image, which is all these tests need.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from iterseg.api import analyze
from iterseg.cli import main
from iterseg.dicom.series import find_image_series
from iterseg.errors import ModelArchiveError, SnapshotError, UsageError
from iterseg.rawdata.archives import extract_archive
from iterseg.records import AnalysisRecord, Manifest, Promotion, read_record, write_record
from iterseg.release.installed import resolve_model
from nnunet_models import TRAINER, random_fold_model
from seg_checks import referenced_series, seg_label_map

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DATE, GATED = "2026-01-15", "2026-02-01"
NAME = "Dataset901_demo_20260115"
ROI = "config/roi_demo.yaml"  # recorded relative to the project, as the workflow records it


def _manifest(project: Path, checkpoint: Path, promotion: Promotion, labels: dict[str, int]) -> Manifest:
    return Manifest(
        iteration=DATE, dataset_name=NAME, parent={}, summary={}, labels=labels, test_set={}, cases=(),
        config={"datasets": {"demo": {"modality": "CT"}}}, config_sha256="0" * 64,
        roi_yaml={"path": ROI, "sha256": hashlib.sha256((project / ROI).read_bytes()).hexdigest()},
        versions={}, plans={},
        folds=({"fold": "0", "trainer": TRAINER, "status": "finished", "checkpoint": str(checkpoint)},),
        test_metrics={}, predictions=(), promotion=promotion,
    )  # fmt: skip


@pytest.fixture(scope="module")
def project(planned_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose iteration DATE is promoted (``latest``) and GATED was gated out."""
    root = tmp_path_factory.mktemp("analyze_project")
    (root / ROI).parent.mkdir()
    (root / ROI).write_text((planned_demo / ROI).read_text() + "# the project's own copy\n")
    work_from = planned_demo / f"data/procdata/demo/{DATE}__demo"
    work = root / f"data/procdata/demo/{DATE}__demo"
    work.mkdir(parents=True)
    shutil.copy(work_from / "planned.json", work / "planned.json")
    model = random_fold_model(work_from / "nnUNet_preprocessed" / NAME, work / "nnUNet_results" / NAME, (0,))
    for root_name in ("nnUNet_raw", "nnUNet_preprocessed"):  # as in a trained iteration's folder
        (work / root_name).mkdir()
    labels = json.loads((model / "dataset.json").read_text())["labels"]
    checkpoint = model / "fold_0/checkpoint_final.pth"
    results = root / "data/results/demo"
    promoted = _manifest(root, checkpoint, Promotion(True, "ok", None), labels)
    gated = _manifest(root, checkpoint, Promotion(False, "test mean Dice 0.5 vs 0.9 of latest", DATE), labels)
    write_record(results / DATE / "manifest.json", promoted)
    write_record(results / GATED / "manifest.json", gated)
    (results / "latest").symlink_to(DATE)
    shutil.copytree(planned_demo / "data/rawdata/demo/inbox/P101", root / "cases/P101")
    (ct,) = find_image_series(root / "cases/P101", "CT")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in ct.files])
    sitk.WriteImage(reader.Execute(), str(root / "cases/ct.nii.gz"))  # P101 again, as NIfTI
    return root


def _tar(members: dict[str, Path | bytes], gzip: bool = False) -> bytes:
    """A tar archive in memory: archive name -> a folder or file to add, or a file's bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gzip else "w") as tar:
        for name, source in members.items():
            if isinstance(source, Path):
                tar.add(source, arcname=name)
            else:
                info = tarfile.TarInfo(name)
                info.size = len(source)
                tar.addfile(info, io.BytesIO(source))
    return buffer.getvalue()


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_the_cases_of_several_archives_each_get_their_own_output(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two archives, each with a P101 folder: two SEGs; the NIfTI case's labels are P101's."""
    cases = project / "cases"
    first = _tar({"P101": cases / "P101", "nifti/ct.nii.gz": cases / "ct.nii.gz", "README.txt": b"notes"})
    second = _tar({"P101": cases / "P101", "B-not-dicom/IM0001": b"a viewer's export log"}, gzip=True)
    work = project / f"data/procdata/demo/{DATE}__demo"
    model_before, project_before = _listing(work), _listing(project)
    # torch makes its compile cache <tmp>/torchinductor_<user> once per process, when nnU-Net's
    # predictor first imports torch._dynamo: torch's folder, there before any analysis in a process
    importlib.import_module("torch._dynamo")
    # a temporary folder of its own: /tmp is shared with whatever else runs meanwhile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    made: list[Path] = []

    class Recorded(tempfile.TemporaryDirectory):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(Path(self.name))

    monkeypatch.setattr(tempfile, "TemporaryDirectory", Recorded)
    result = analyze([first, second], model=project / "data/results/demo/latest", device="cpu")
    assert _listing(work) == model_before and _listing(project) == project_before  # nothing written
    assert [p.parent for p in made] == [tmp_path / "tmp"] and not made[0].exists()
    assert os.listdir(tempfile.gettempdir()) == []  # the temporary folder removed, nothing else left
    assert result["status"] == "done"
    segs = result["dicom_seg_bytes"]
    assert len(segs) == 2 and all(name.startswith("P101_") for name in segs), sorted(segs)
    assert list(result["nifti_seg_bytes"]) == ["ct.nii.gz"]
    assert sorted(result["errors"]) == ["B-not-dicom", "input 1"]
    assert result["errors"]["B-not-dicom"].startswith("input 2/B-not-dicom: no CT DICOM series")
    assert "README.txt" in result["errors"]["input 1"] and "/tmp" not in json.dumps(result["errors"])
    (project / "out").mkdir()
    nifti = project / "out/ct.nii.gz"
    nifti.write_bytes(result["nifti_seg_bytes"]["ct.nii.gz"])
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(nifti)))
    (series,) = find_image_series(cases / "P101", "CT")
    for name, data in segs.items():
        (project / "out" / name).write_bytes(data)
        assert referenced_series(project / "out" / name) == series.series_uid
        assert np.array_equal(seg_label_map(project / "out" / name, series.datasets), labels), name
    shutil.rmtree(project / "out")


def test_bad_bytes_and_no_inputs_fail_without_raising(project: Path) -> None:
    latest = project / "data/results/demo/latest"
    empty = analyze([], model=latest)
    assert empty == {
        "status": "failed", "dicom_seg_bytes": {}, "nifti_seg_bytes": {},
        "errors": {"inputs": empty["errors"]["inputs"]},
    }  # fmt: skip
    assert empty["errors"]["inputs"].startswith("nothing to analyze: no archive was given")
    truncated = _tar({"P101": project / "cases/P101"}, gzip=True)
    inputs: list = [b"not a tar archive", truncated[: len(truncated) // 2], "P101.tar"]
    bad = analyze(inputs, model=latest)
    assert bad["status"] == "failed" and not bad["dicom_seg_bytes"] and not bad["nifti_seg_bytes"]
    assert sorted(bad["errors"]) == ["input 1", "input 2", "input 3", "inputs"]
    for key in ("input 1", "input 2"):
        assert bad["errors"][key].startswith(f"{key}: truncated or corrupt archive"), bad["errors"][key]
        assert "each input must be a .tar or .tar.gz archive" in bad["errors"][key]
        assert "snapshot" not in bad["errors"][key]
    assert bad["errors"]["input 3"] == "input 3: a str, not the bytes of a .tar or .tar.gz archive."
    assert "none of them could be unpacked" in bad["errors"]["inputs"]
    nothing = analyze([_tar({"notes.txt": b"hello"})], model=latest)
    assert nothing["status"] == "failed" and sorted(nothing["errors"]) == ["input 1", "inputs"]


def test_no_case_predicted_fails_naming_each(project: Path) -> None:
    archive = _tar({"A/IM1": b"not DICOM", "B/ct.nii.gz": b"<html>session expired</html>"})
    result = analyze([archive], project / "data/results/demo/latest")
    assert result["status"] == "failed", result
    (message,) = result["errors"].values()
    assert "input 1/A: no CT DICOM series" in message and "input 1/B/ct.nii.gz: inbox case ct" in message


@pytest.mark.parametrize("attack", ["dotdot", "absolute", "symlink"])
def test_an_unsafe_member_is_refused_as_in_a_snapshot(project: Path, tmp_path: Path, attack: str) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(project / "cases/P101", arcname="P101")
        if attack == "symlink":
            bad = tarfile.TarInfo("P101/link.dcm")
            bad.type, bad.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
            tar.addfile(bad)
        else:
            bad = tarfile.TarInfo("../evil.dcm" if attack == "dotdot" else str(tmp_path / "evil.dcm"))
            bad.size = 4
            tar.addfile(bad, io.BytesIO(b"evil"))
    (tmp_path / "evil.tar").write_bytes(buffer.getvalue())
    (tmp_path / "unpacked").mkdir()
    with pytest.raises(SnapshotError) as snapshot:
        extract_archive(tmp_path / "evil.tar", tmp_path / "unpacked")
    result = analyze([buffer.getvalue()], model=project / "data/results/demo/latest")
    assert result["status"] == "failed" and not result["dicom_seg_bytes"]
    message = result["errors"]["input 1"]
    if attack == "symlink":  # the same refusal; the fix named for the analyzer's archives
        assert message == str(snapshot.value).replace(str(tmp_path / "evil.tar"), "input 1").replace(
            "snapshots need none", "analyzed archives need none"
        )
    else:
        assert message == str(snapshot.value).replace(str(tmp_path / "evil.tar"), "input 1")
    assert not list(tmp_path.rglob("evil.dcm")) and not (tmp_path.parent / "evil.dcm").exists()


def test_a_model_that_is_not_promoted_or_no_model_is_refused(project: Path, tmp_path: Path) -> None:
    archive = _tar({"P101": project / "cases/P101"})
    gated = project / f"data/results/demo/{GATED}"
    with pytest.raises(ModelArchiveError, match="was not promoted") as refused:
        analyze([archive], model=gated)
    assert str(gated / "manifest.json") in str(refused.value) and "test mean Dice 0.5" in str(refused.value)
    with pytest.raises(ModelArchiveError, match="no model there"):
        analyze([archive], model=tmp_path)
    with pytest.raises(UsageError, match="device 'gpu'"):
        analyze([archive], model=project / "data/results/demo/latest", device="gpu")
    model = resolve_model(project / "data/results/demo/latest")  # the project's ROI YAML, not the repo's
    assert (model.roi_yaml, model.description, model.folds) == (project / ROI, f"iterseg demo {DATE}", ("0",))
    assert model.work == project / f"data/procdata/demo/{DATE}__demo" and model.card is None


def test_the_cli_writes_segs_labels_and_analysis_json(project: Path, tmp_path: Path) -> None:
    good, bad = tmp_path / "good.tar", tmp_path / "bad.tar"
    good.write_bytes(_tar({"P101": project / "cases/P101", "ct.nii.gz": project / "cases/ct.nii.gz"}))
    bad.write_bytes(_tar({"../evil.dcm": b"evil"}))
    out, model = tmp_path / "out", str(project / "data/results/demo/latest")
    assert main(["analyze", str(good), str(bad), "--model", model, "--out", str(out)]) == 0
    record = read_record(out / "analysis.json", AnalysisRecord)
    assert (record.status, record.files, record.inputs) == (
        "done", ("seg/P101.dcm", "labels/ct.nii.gz"), (str(good), str(bad)),
    )  # fmt: skip
    assert list(record.errors) == ["input 2"] and "'..'" in record.errors["input 2"]
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "analysis.json", "labels/ct.nii.gz", "seg/P101.dcm",
    ]  # fmt: skip
    assert main(["analyze", str(good), "--model", model, "--out", str(out)]) == 2  # not empty: refused
    assert read_record(out / "analysis.json", AnalysisRecord) == record
    forced = ["analyze", str(bad), "--model", model, "--out", str(out), "--force"]
    assert main(forced) == 2  # nothing analyzed: the earlier results replaced by the record saying so
    failed = read_record(out / "analysis.json", AnalysisRecord)
    assert failed.status == "failed" and failed.files == () and not (out / "seg").exists()
    missing = ["analyze", str(tmp_path / "missing.tar"), "--model", model, "--out", str(tmp_path / "o")]
    assert main(missing) == 2
    assert not (tmp_path / "o").exists()
