"""A dataset that starts in NIfTI and goes on in DICOM: the same image is one case, not two.

The demo's first snapshot exported as a Decathlon folder under other case names (``case_001``,
as public datasets name them, written in RAS order as dcm2niix writes), then the demo's DICOM
second snapshot, which refines P001, P002 and P004 on their DICOM series. The refined DICOM
annotation must replace its NIfTI case, and a test image must stay in the test set under its
new name.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO
from iterseg.convert.assemble import HoldoutSpec, assemble_dataset
from iterseg.convert.snapshot import convert_snapshot
from iterseg.dicom.codes import SegmentLabel
from iterseg.dicom.series import find_image_series
from iterseg.rawdata.demo import SNAPSHOT_DATES, annotated, demo_plan, make_phantom, phantom_arrays

ROI = REPO / "config/roi_demo.yaml"


def _nifti_snapshot(dicom: Path, folder: Path) -> None:
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
    for case in demo_plan()[dicom.name]:
        name = f"case_{case.patient_id[1:]}"
        (ct,) = find_image_series(dicom / case.patient_id, "CT")
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([str(f) for f in ct.files])
        image = reader.Execute()
        _, masks = phantom_arrays(annotated(make_phantom(case.patient_id, case.seed), case.tumour_scale))
        label = np.zeros(masks[SegmentLabel.LIVER].shape, np.uint8)
        label[masks[SegmentLabel.LIVER]], label[masks[SegmentLabel.TUMOUR]] = 1, 2
        drawn = sitk.GetImageFromArray(label)
        drawn.CopyInformation(image)
        sitk.WriteImage(sitk.DICOMOrient(image, "RAS"), str(folder / "imagesTr" / f"{name}_0000.nii.gz"))
        sitk.WriteImage(sitk.DICOMOrient(drawn, "RAS"), str(folder / "labelsTr" / f"{name}.nii.gz"))
    labels = {"background": 0, "liver": 1, "tumour": 2}
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": labels}))


@pytest.fixture(scope="module")
def converted(demo_rawdata: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("same-image")
    first, second = (f"{date}__demo" for date in SNAPSHOT_DATES)
    _nifti_snapshot(demo_rawdata / first, root / "rawdata" / first)
    nifti = convert_snapshot(root / "rawdata" / first, root / "first/converted", ROI)
    dicom = convert_snapshot(demo_rawdata / second, root / "second/converted", ROI)
    return {"root": root, "nifti": nifti, "dicom": dicom}


def test_a_dicom_series_and_its_nifti_export_have_one_voxel_hash(converted: dict) -> None:
    nifti = {c.patient_id: c.voxel_hash for c in converted["nifti"]}
    dicom = {c.patient_id: c.voxel_hash for c in converted["dicom"]}
    for n in ("001", "002", "004"):
        assert nifti[f"case_{n}"] == dicom[f"P{n}"] and len(dicom[f"P{n}"]) == 64
    assert len(set(nifti.values())) == len(nifti)  # seven images, seven hashes


def test_the_dicom_annotation_replaces_its_nifti_case_and_a_test_image_stays_held_out(
    converted: dict,
) -> None:
    root = converted["root"]
    record = assemble_dataset(
        [root / "first/converted", root / "second/converted"],
        root / "raw/Dataset901_demo",
        ROI,
        "CT",
        test_spec=HoldoutSpec(patients=("case_003", "case_004")),
    )
    by_patient = {r["patient_id"]: r for r in record.records}
    assert not {"case_001", "case_002", "case_004"} & set(by_patient)
    for n in ("001", "002", "004"):
        (twin,) = [s for s in by_patient[f"P{n}"]["superseded"] if "same_image_as" in s]
        assert twin["patient_id"] == f"case_{n}" and twin["annotation_kind"] == "NIFTI"
    assert by_patient["P004"]["split"] == "test"  # held out as case_004 at the first iteration
    assert by_patient["P001"]["split"] == by_patient["P002"]["split"] == "train"
    assert {r["patient_id"] for r in record.records if r["split"] == "test"} == {"case_003", "P004"}
    assert len(record.records) == len(converted["dicom"]) + len(converted["nifti"]) - 3


def test_two_cases_of_one_image_in_one_snapshot_both_stay_with_a_warning(
    converted: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = converted["root"] / "rawdata" / f"{SNAPSHOT_DATES[0]}__demo"
    snapshot = tmp_path / source.name
    shutil.copytree(source, snapshot)
    shutil.copy(snapshot / "imagesTr/case_005_0000.nii.gz", snapshot / "imagesTr/copy_005_0000.nii.gz")
    shutil.copy(snapshot / "labelsTr/case_005.nii.gz", snapshot / "labelsTr/copy_005.nii.gz")
    convert_snapshot(snapshot, tmp_path / "converted", ROI)
    with caplog.at_level(logging.WARNING, logger="iterseg.convert.assemble"):
        record = assemble_dataset([tmp_path / "converted"], tmp_path / "raw/Dataset901_demo", ROI, "CT")
    assert {"case_005", "copy_005"} <= {r["patient_id"] for r in record.records}
    assert any("hold the same image" in m and "leave one of them out" in m for m in caplog.messages)
