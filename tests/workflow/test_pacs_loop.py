"""The PACS loop end to end, through snakemake and a real Orthanc, the way a site runs it.

The demo's first snapshot and inbox CTs are stored on Orthanc; ``iterseg pacs pull`` builds
snapshot 1, snakemake trains iteration 1 and pushes its predicted SEGs; the test then plays the
researcher in a viewer: it reads one predicted SEG from Orthanc, edits the mask and saves it as
a viewer does (new SeriesInstanceUID and SOPInstanceUID, its own Manufacturer, MANUAL segments),
and stores it back. The second pull builds snapshot 2 with that refined SEG and its CT, and
iteration 2 trains on it: its manifest names the prediction the annotation refines, and the
annotation effort is measured against that prediction.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from conftest import REPO, tree_digest
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_auth
from orthanc_server import OrthancServer, start_orthanc
from pacs_project import CONFIG, credentials_env, iterseg_pacs, upload_demo, write_config

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

FIRST, SECOND = "2026-01-15", "2026-03-02"
VIEWER = "3D Slicer"


def snakemake(project: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "snakemake"
    return subprocess.run(
        [str(exe), "--snakefile", str(REPO / "Snakefile"), "--directory", str(project),
         "--configfile", str(project / CONFIG)],
        capture_output=True, text=True, timeout=1500, env=env, check=False,
    )  # fmt: skip


def _client(server: OrthancServer) -> DICOMwebClient:
    return DICOMwebClient(server.dicomweb_url, session=create_session_from_auth(server.auth))


def refine_in_viewer(server: OrthancServer, pushed: dict[str, Any]) -> pydicom.Dataset:
    """Edit a predicted SEG the way a researcher's viewer saves it, and store it on the PACS."""
    client = _client(server)
    study = pushed["study_instance_uid"]
    seg_ds = client.retrieve_instance(study, pushed["series_instance_uid"], pushed["sop_instance_uid"])
    images = client.retrieve_series(study, seg_ds.ReferencedSeriesSequence[0].SeriesInstanceUID)
    images.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    seg = hd.seg.Segmentation.from_dataset(seg_ds)
    labels = np.asarray(
        seg.get_pixels_by_source_instance(
            [str(ds.SOPInstanceUID) for ds in images],
            combine_segments=True,
            assert_missing_frames_are_empty=True,
        )
    ).astype(np.uint8)
    edited = labels.copy()
    rows = np.flatnonzero(labels.any(axis=(0, 2)))
    middle = len(images) // 2
    edited[middle - 1 : middle + 2, rows.min() : rows.max() + 1, 2:12] = 1  # the liver drawn wider
    edited[middle + 3][edited[middle + 3] == 2] = 1  # a tumour section erased
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=int(item.SegmentNumber),
            segment_label=str(item.SegmentLabel),
            segmented_property_category=hd.sr.CodedConcept.from_dataset(
                item.SegmentedPropertyCategoryCodeSequence[0]
            ),
            segmented_property_type=hd.sr.CodedConcept.from_dataset(
                item.SegmentedPropertyTypeCodeSequence[0]
            ),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for item in seg_ds.SegmentSequence
    ]
    refined = hd.seg.Segmentation(
        source_images=images, pixel_array=edited, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=7,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=VIEWER, manufacturer_model_name="Slicer",
        software_versions="5.6.2", device_serial_number="1", series_description="liver refined",
    )  # fmt: skip
    refined.preamble = b"\0" * 128  # as a file a viewer writes (pydicom writes none for a new Dataset)
    client.store_instances([refined])
    return refined


@pytest.fixture(scope="module")
def pacs_loop(tmp_path_factory: pytest.TempPathFactory, demo_rawdata: Path) -> Iterator[dict[str, Any]]:
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        upload_demo(server, demo_rawdata, "first")
        upload_demo(server, demo_rawdata, "inbox")
        project = tmp_path_factory.mktemp("pacs-project")
        # The PACS round trip, not learning: no Dice gate, and a short schedule.
        short = {"first_iteration": {"epochs": 3}, "fine_tuning": {"epochs": 2, "initial_lr": 0.001}}
        write_config(project, server.dicomweb_url, promotion={"max_dice_drop": None}, nnunet=short)
        env = credentials_env(server)
        pull1 = iterseg_pacs(project, env, "pull", "--date", FIRST)
        assert pull1.returncode == 0, pull1.stderr
        run1 = snakemake(project, env)
        assert run1.returncode == 0, run1.stdout[-5000:] + run1.stderr[-5000:]
        pushed1 = json.loads((project / f"data/results/demo/{FIRST}/pacs_pushed.json").read_text())
        on_pacs_after_1 = sorted(server.instances())
        (p103,) = [p for p in pushed1["pushed"] if p["case_id"].startswith("P103")]
        refined = refine_in_viewer(server, p103)
        status = iterseg_pacs(project, env, "status")
        before_pull2 = tree_digest(project / "data/rawdata")
        pull2 = iterseg_pacs(project, env, "pull", "--date", SECOND)
        assert pull2.returncode == 0, pull2.stderr
        after_pull2 = tree_digest(project / "data/rawdata")
        run2 = snakemake(project, env)
        assert run2.returncode == 0, run2.stdout[-5000:] + run2.stderr[-5000:]
        rerun = snakemake(project, env)
        yield {
            "server": server, "project": project, "pull1": pull1, "pull2": pull2, "status": status,
            "pushed1": pushed1, "on_pacs_after_1": on_pacs_after_1, "p103": p103, "refined": refined,
            "before_pull2": before_pull2, "after_pull2": after_pull2, "rerun": rerun, "env": env,
        }  # fmt: skip
    finally:
        server.close()


def test_the_first_pull_builds_snapshot_1_and_the_inbox(pacs_loop: dict[str, Any]) -> None:
    project = pacs_loop["project"]
    record = json.loads((project / f"data/rawdata/demo/{FIRST}__demo/pacs_pull.json").read_text())
    assert sorted(a["patient_id"] for a in record["annotations"]) == [f"P00{i}" for i in range(1, 8)]
    assert all(a["refines_prediction"] is None for a in record["annotations"])
    assert sorted(p.name.split("_")[0] for p in (project / "data/rawdata/demo/inbox").iterdir()) == [
        "P101", "P102", "P103",
    ]  # fmt: skip
    assert pacs_loop["server"].password not in json.dumps(record)


def test_promoted_iterations_push_their_predicted_segs_once(pacs_loop: dict[str, Any]) -> None:
    project, server = pacs_loop["project"], pacs_loop["server"]
    pushed1 = pacs_loop["pushed1"]
    assert pushed1["transfer_syntax"] == "explicit_vr_little_endian" and len(pushed1["pushed"]) == 3
    assert {p["sop_instance_uid"] for p in pushed1["pushed"]} <= set(pacs_loop["on_pacs_after_1"])
    stored = pydicom.dcmread(
        pydicom.filebase.DicomBytesIO(server.instance_bytes(pushed1["pushed"][0]["sop_instance_uid"]))
    )
    assert stored.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert stored.Manufacturer == "iterseg"
    local = pydicom.dcmread(project / pushed1["pushed"][0]["file"])
    assert (
        local.file_meta.TransferSyntaxUID == pydicom.uid.DeflatedExplicitVRLittleEndian
    )  # files stay deflated
    pushed2 = json.loads((project / f"data/results/demo/{SECOND}/pacs_pushed.json").read_text())
    assert len(pushed2["pushed"]) == 3
    everything = set(server.instances())
    assert {p["sop_instance_uid"] for p in pushed1["pushed"] + pushed2["pushed"]} <= everything
    rerun = pacs_loop["rerun"]
    assert rerun.returncode == 0 and "Nothing to be done" in rerun.stdout + rerun.stderr


def test_the_second_pull_takes_only_the_refined_seg_and_its_ct(pacs_loop: dict[str, Any]) -> None:
    project, refined = pacs_loop["project"], pacs_loop["refined"]
    status = pacs_loop["status"]
    assert status.returncode == 0 and "1 new annotations (1 refining our predictions)" in status.stdout
    assert f"({VIEWER}), refines the prediction of {pacs_loop['p103']['case_id']} ({FIRST})" in status.stdout
    assert "our predicted SEGs there: 3" in status.stdout
    changed = {k for k in pacs_loop["after_pull2"] if k not in pacs_loop["before_pull2"]}
    assert all(k.startswith(f"demo/{SECOND}__demo") for k in changed)  # snapshot 1 and the inbox untouched
    assert all(pacs_loop["after_pull2"][k] == v for k, v in pacs_loop["before_pull2"].items())
    record = json.loads((project / f"data/rawdata/demo/{SECOND}__demo/pacs_pull.json").read_text())
    (annotation,) = record["annotations"]
    assert (
        annotation["sop_instance_uid"] == str(refined.SOPInstanceUID) and annotation["manufacturer"] == VIEWER
    )
    assert annotation["refines_prediction"] == {"iteration": FIRST, "case_id": pacs_loop["p103"]["case_id"]}
    (image,) = record["images"]
    assert image["series_instance_uid"] == str(refined.ReferencedSeriesSequence[0].SeriesInstanceUID)
    files = list((project / f"data/rawdata/demo/{SECOND}__demo").rglob("*.dcm"))
    assert len(files) == image["instances"] + 1


def test_iteration_2_trains_on_the_refined_seg_superseding_the_prediction(pacs_loop: dict[str, Any]) -> None:
    project = pacs_loop["project"]
    results = project / "data/results/demo"
    assert os.readlink(results / "latest") == SECOND
    manifest = json.loads((results / SECOND / "manifest.json").read_text())
    (case,) = [c for c in manifest["cases"] if c["patient_id"] == "P103"]
    assert case["split"] == "train" and case["change"] == "new"
    assert case["annotation"]["sop_uids"] == [str(pacs_loop["refined"].SOPInstanceUID)]
    assert case["refines_prediction"]["iteration"] == FIRST
    assert case["refines_prediction"]["case_id"] == pacs_loop["p103"]["case_id"]
    assert all(c["refines_prediction"] is None for c in manifest["cases"] if c["patient_id"] != "P103")
    effort = json.loads((results / SECOND / "annotation_effort.json").read_text())
    (measured,) = effort["cases"]
    assert measured["patient_id"] == "P103" and measured["seeded_by"]["iteration"] == FIRST
    assert measured["slices_edited"] >= 3 and not measured["unedited"]


def test_after_the_loop_the_pacs_holds_nothing_new(pacs_loop: dict[str, Any]) -> None:
    run = iterseg_pacs(pacs_loop["project"], pacs_loop["env"], "status")
    assert run.returncode == 0 and "nothing new to pull" in run.stdout
    assert "our predicted SEGs there: 6" in run.stdout and "already pulled: 8 annotations" in run.stdout
