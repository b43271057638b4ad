"""``iterseg pacs`` against a real Orthanc (Debian's orthanc + orthanc-dicomweb): pull, status, push, faults.

The PACS holds the demo's first snapshot (CT series with SEG and RTSTRUCT annotations) and its
inbox CTs, stored the way a modality and a planning system would send them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fault_proxy import FaultProxy
from iterseg.errors import PacsError
from iterseg.pacs.pull import pacs_status, pull_dataset
from iterseg.pacs.push import PredictedSeg, push_segs
from orthanc_server import OrthancServer, start_orthanc
from pacs_project import (
    PASSWORD_ENV,
    USER_ENV,
    credentials_env,
    iterseg_pacs,
    settings,
    upload_demo,
    write_config,
)

pytestmark = pytest.mark.integration

DATE = "2026-01-15"


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory, demo_rawdata: Path) -> Iterator[OrthancServer]:
    """An Orthanc holding the demo's first snapshot and inbox (read-only for the tests using it)."""
    with start_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        upload_demo(server, demo_rawdata, "first")
        upload_demo(server, demo_rawdata, "inbox")
        yield server


@pytest.fixture
def logged_in(loaded: OrthancServer, monkeypatch: pytest.MonkeyPatch) -> OrthancServer:
    monkeypatch.setenv(USER_ENV, loaded.user)
    monkeypatch.setenv(PASSWORD_ENV, loaded.password)
    return loaded


def _project(tmp_path: Path, url: str, **pacs: object) -> Path:
    project = tmp_path / "project"
    write_config(project, url, **pacs)
    return project


def _pull(project: Path, date: str = DATE):  # type: ignore[no-untyped-def]
    s = settings(project)
    return pull_dataset(s, "demo", s.rawdata, s.inbox, project / "data/results", date)


def _no_leftovers(project: Path) -> None:
    root = project / "data/rawdata/demo"
    left = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    assert not [n for n in left if n.endswith(".partial") or n[:1].isdigit()], left
    inbox = root / "inbox"
    assert not inbox.is_dir() or not any(inbox.iterdir())


def test_pull_builds_a_complete_snapshot_and_inbox_then_finds_nothing_new(
    logged_in: OrthancServer, demo_rawdata: Path, tmp_path: Path
) -> None:
    project = _project(tmp_path, logged_in.dicomweb_url)
    result = _pull(project)
    snapshot = project / f"data/rawdata/demo/{DATE}__demo"
    assert result.snapshot == snapshot and snapshot.is_dir()
    first = sorted(p for p in demo_rawdata.iterdir() if p.name[:1].isdigit())[0]
    source = {
        str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in first.rglob("*.dcm")
    }
    pulled = {
        str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in snapshot.rglob("*.dcm")
    }
    assert set(pulled) == set(source)  # every annotation and every image it references, nothing else
    some = sorted(source)[3]
    a, b = pydicom.dcmread(source[some]), pydicom.dcmread(pulled[some])
    assert a.SeriesInstanceUID == b.SeriesInstanceUID and a.Modality == b.Modality
    if "PixelData" in a:
        assert np.array_equal(a.pixel_array, b.pixel_array)
    record = (snapshot / "pacs_pull.json").read_text()
    assert logged_in.password not in record
    inbox = sorted(p.name for p in (project / "data/rawdata/demo/inbox").iterdir())
    assert [n.split("_")[0] for n in inbox] == ["P101", "P102", "P103"]
    # The second pull, the same day or later: nothing new, nothing written.
    before = sorted(str(p) for p in (project / "data/rawdata").rglob("*"))
    again = _pull(project, "2026-01-16")
    assert again.plan.empty and again.snapshot is None and again.files == 0
    assert again.plan.already_pulled == 7
    assert sorted(str(p) for p in (project / "data/rawdata").rglob("*")) == before
    with pytest.raises(PacsError, match="exists and is never rewritten"):
        _pull(project, DATE)


def test_status_lists_what_a_pull_would_take_and_writes_nothing(
    logged_in: OrthancServer, tmp_path: Path
) -> None:
    project = _project(tmp_path, logged_in.dicomweb_url, studies={"patient_ids": ["P001", "P002", "P10*"]})
    s = settings(project)
    plan = pacs_status(s, "demo", s.rawdata, s.inbox, project / "data/results")
    assert sorted(a.series.patient_id for a in plan.annotations) == ["P001", "P002"]
    assert {a.series.modality for a in plan.annotations} == {"SEG", "RTSTRUCT"}
    assert sorted(s.patient_id for s in plan.inbox) == ["P101", "P102", "P103"]
    assert not (project / "data").exists()


def test_cli_pull_and_a_wrong_password_in_one_line_without_the_secret(
    loaded: OrthancServer, tmp_path: Path
) -> None:
    project = _project(tmp_path, loaded.dicomweb_url)
    wrong = "not-the-Password-42"
    run = iterseg_pacs(project, credentials_env(loaded, wrong), "status")
    assert run.returncode == 2
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "refused the login (HTTP 401)" in lines[0], run.stderr
    assert USER_ENV in lines[0] and PASSWORD_ENV in lines[0]
    assert wrong not in run.stderr + run.stdout and loaded.password not in run.stderr + run.stdout
    run = iterseg_pacs(project, credentials_env(loaded), "pull", "--date", DATE)
    assert run.returncode == 0, run.stderr
    assert "7 new annotations" in run.stdout and f"snapshot data/rawdata/demo/{DATE}__demo" in run.stdout
    assert loaded.password not in run.stdout + run.stderr
    run = iterseg_pacs(project, credentials_env(loaded), "pull", "--date", "2026-02-01")
    assert run.returncode == 0 and "nothing new on the PACS" in run.stdout


def test_an_unset_credential_variable_is_named(loaded: OrthancServer, tmp_path: Path) -> None:
    project = _project(tmp_path, loaded.dicomweb_url)
    env = credentials_env(loaded)
    del env[PASSWORD_ENV]
    run = iterseg_pacs(project, env, "status")
    assert run.returncode == 2 and f"environment variable {PASSWORD_ENV}" in run.stderr


def test_a_pacs_that_is_down_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv(USER_ENV, "u")
    monkeypatch.setenv(PASSWORD_ENV, "p")
    project = _project(tmp_path, f"http://127.0.0.1:{port}/dicom-web")
    start = time.monotonic()
    with pytest.raises(PacsError, match=r"cannot be reached .*connection refused, 3 tries"):
        _pull(project)
    assert time.monotonic() - start < 5  # dicomweb-client alone retries for ~30 s
    _no_leftovers(project)


@pytest.mark.parametrize("cut", [{"parts": 3}, {"keep": 0.5}, {"parts": 0}])
def test_a_truncated_wado_answer_is_refused(
    logged_in: OrthancServer, tmp_path: Path, cut: dict[str, int | float]
) -> None:
    with FaultProxy(logged_in.url) as proxy:
        project = _project(tmp_path, proxy.url + "/dicom-web")
        proxy.truncate_wado(**cut)  # type: ignore[arg-type]
        with pytest.raises(PacsError, match=r"cut short|instances arrived"):
            _pull(project)
        assert proxy.truncated >= 1
    _no_leftovers(project)


def test_orthanc_killed_mid_pull_leaves_no_snapshot(tmp_path: Path, demo_rawdata: Path) -> None:
    server = start_orthanc(tmp_path / "orthanc")
    try:
        upload_demo(server, demo_rawdata, "first")
        project = _project(tmp_path, "")
        with FaultProxy(server.url) as proxy:
            write_config(project, proxy.url + "/dicom-web")
            env = credentials_env(server)
            proxy.before_wado(6, server.kill)  # after the first series are written
            run = iterseg_pacs(project, env, "pull", "--date", DATE)
            assert not server.is_running() and proxy.requests_seen > 6
        lines = [line for line in run.stderr.splitlines() if "ERROR" in line]
        assert run.returncode == 2 and len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
        assert "HTTP 502" in lines[0] and "(3 tries)" in lines[0]  # the proxy's answer for a dead PACS
        _no_leftovers(project)
        server.restart()  # the PACS back: the same pull now succeeds
        write_config(project, server.dicomweb_url)
        run = iterseg_pacs(project, credentials_env(server), "pull", "--date", DATE)
        assert run.returncode == 0 and (project / f"data/rawdata/demo/{DATE}__demo/pacs_pull.json").is_file()
    finally:
        server.close()


def test_orthanc_labels_need_orthanc_1_12(logged_in: OrthancServer, tmp_path: Path) -> None:
    project = _project(tmp_path, logged_in.dicomweb_url, studies={"orthanc_label": "iterseg"})
    s = settings(project)
    with pytest.raises(PacsError, match=r"Orthanc 1\.10\.1, which has no labels"):
        pacs_status(s, "demo", s.rawdata, s.inbox, project / "data/results")


# --- push ------------------------------------------------------------------------------------------


@pytest.fixture
def empty_orthanc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[OrthancServer]:
    """An empty Orthanc, its credentials in the environment; push rounds 0.05 s apart."""
    with start_orthanc(tmp_path / "orthanc") as server:
        monkeypatch.setenv(USER_ENV, server.user)
        monkeypatch.setenv(PASSWORD_ENV, server.password)
        monkeypatch.setattr("iterseg.pacs.push.FIRST_PAUSE_S", 0.05)
        yield server


def _predicted_seg(tmp_path: Path, demo_rawdata: Path, case: str = "P101") -> PredictedSeg:
    """A SEG of ours on the inbox CT of ``case``, deflated as the predict step writes it."""
    from iterseg.dicom.seg_writer import export_seg
    from iterseg.dicom.series import find_image_series

    (series,) = find_image_series(demo_rawdata / "inbox" / case, "CT")
    label = np.zeros(
        (len(series.datasets), int(series.datasets[0].Rows), int(series.datasets[0].Columns)), np.uint8
    )
    label[2:5, 10:20, 10:20] = 1
    path = tmp_path / f"{case}.dcm"
    seg = export_seg(label, series.datasets, {"background": 0, "liver": 1}, path, "iterseg demo", "v1")
    return PredictedSeg(
        case, path, str(seg.StudyInstanceUID), str(seg.SeriesInstanceUID), str(seg.SOPInstanceUID)
    )


def _pacs_settings(url: str, **push: object):  # type: ignore[no-untyped-def]
    from iterseg.pacs.settings import pacs_settings

    raw = {
        "url": url, "auth": {"username_env": USER_ENV, "password_env": PASSWORD_ENV},
        "studies": {"patient_ids": []},
        "push": {"enabled": True, "transfer_syntax": "explicit_vr_little_endian", **push},
        "attempts": 3, "timeout_s": 30,
    }  # fmt: skip
    return pacs_settings("demo", raw, "CT")


def test_push_stores_explicit_little_endian_once_and_is_idempotent(
    empty_orthanc: OrthancServer, demo_rawdata: Path, tmp_path: Path
) -> None:
    segs = [_predicted_seg(tmp_path, demo_rawdata, c) for c in ("P101", "P102")]
    assert (
        pydicom.dcmread(segs[0].file).file_meta.TransferSyntaxUID
        == pydicom.uid.DeflatedExplicitVRLittleEndian
    )
    with FaultProxy(empty_orthanc.url) as proxy:
        settings_ = _pacs_settings(proxy.url + "/dicom-web")
        assert push_segs(settings_, "demo", segs) == 1
        posts = [p for m, p in proxy.seen if m == "POST"]
        assert len(posts) == 2
        assert sorted(empty_orthanc.instances()) == sorted(s.sop_uid for s in segs)
        stored = pydicom.dcmread(pydicom.filebase.DicomBytesIO(empty_orthanc.instance_bytes(segs[0].sop_uid)))
        assert stored.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        original = pydicom.dcmread(segs[0].file)
        assert stored.SOPInstanceUID == original.SOPInstanceUID and stored.PixelData == original.PixelData
        # the duplicate push asks the PACS and sends nothing
        assert push_segs(settings_, "demo", segs) == 1
        assert len([p for m, p in proxy.seen if m == "POST"]) == 2
        assert len(empty_orthanc.instances()) == 2


def test_push_retries_with_a_bound_then_reports_every_seg(
    empty_orthanc: OrthancServer, demo_rawdata: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    segs = [_predicted_seg(tmp_path, demo_rawdata, c) for c in ("P101", "P102")]
    with FaultProxy(empty_orthanc.url) as proxy:
        settings_ = _pacs_settings(proxy.url + "/dicom-web")
        proxy.fail_next(2, 503)  # the first round's checks fail: stored in the second
        assert push_segs(settings_, "demo", segs) == 2
        empty_orthanc.delete_all()
        proxy.fail_next(1000, 400)
        start = time.monotonic()
        with pytest.raises(PacsError) as failed:
            push_segs(settings_, "demo", segs)
        assert time.monotonic() - start < 10
    message = str(failed.value)
    assert "2 of 2 predicted SEGs not stored after 3 rounds" in message and "stays promoted" in message
    assert all(s.sop_uid in message for s in segs) and "HTTP 400" in message
    assert empty_orthanc.password not in message
    monkeypatch.setenv(PASSWORD_ENV, "wrong")
    with pytest.raises(PacsError, match="HTTP 401"):
        push_segs(_pacs_settings(empty_orthanc.dicomweb_url), "demo", segs[:1])
    assert empty_orthanc.instances() == []


def test_a_url_with_credentials_is_refused_without_repeating_them(tmp_path: Path) -> None:
    from iterseg.config import load_settings
    from iterseg.errors import ConfigError

    config = {"datasets": {"demo": {"dataset_id": 901, "pacs": {"url": "http://bob:s3cret@pacs/dicom-web"}}}}
    with pytest.raises(ConfigError) as refused:
        load_settings(config)
    assert "s3cret" not in str(refused.value) and "datasets.demo.pacs.url" in str(refused.value)


def _iteration_records(tmp_path: Path, segs: list[PredictedSeg], promoted: bool) -> tuple[Path, Path]:
    from iterseg.records import IterationSummary, Prediction, Predictions, write_record

    results = tmp_path / "results" / DATE
    (results / "seg").mkdir(parents=True)
    entries = []
    for seg in segs:
        target = results / "seg" / seg.file.name
        target.write_bytes(seg.file.read_bytes())
        entries.append(
            Prediction(seg.case_id, "P", "series", f"labels/{seg.case_id}.nii.gz", f"seg/{target.name}", {})
        )
    write_record(results / "predictions.json", Predictions(tuple(entries)))
    reason = "passed the gate" if promoted else "test Dice dropped by 0.30"
    summary = IterationSummary(DATE, "Dataset901_demo_20260115", 5, promoted, reason, "manifest.json")
    write_record(results / "iteration.json", summary)
    return results / "iteration.json", results / "predictions.json"


def test_push_of_an_iteration_records_what_was_stored_and_a_failure_writes_nothing(
    empty_orthanc: OrthancServer, demo_rawdata: Path, tmp_path: Path
) -> None:
    from iterseg.pacs.push import push_iteration

    segs = [_predicted_seg(tmp_path, demo_rawdata, "P103")]
    iteration, predictions = _iteration_records(tmp_path / "gated", segs, promoted=False)
    record = push_iteration(
        _pacs_settings(empty_orthanc.dicomweb_url), "demo", iteration, predictions, tmp_path / "a.json"
    )
    assert record["pushed"] == [] and "not promoted (test Dice dropped by 0.30)" in record["not_pushed"]
    assert empty_orthanc.instances() == []
    iteration, predictions = _iteration_records(tmp_path / "promoted", segs, promoted=True)
    before = iteration.read_bytes()
    empty_orthanc.kill()  # the PACS goes down before the push
    output = tmp_path / "pushed.json"
    with pytest.raises(PacsError, match="stays promoted"):
        push_iteration(_pacs_settings(empty_orthanc.dicomweb_url), "demo", iteration, predictions, output)
    assert not output.exists() and iteration.read_bytes() == before  # the next run retries the push
    empty_orthanc.restart()
    record = push_iteration(
        _pacs_settings(empty_orthanc.dicomweb_url), "demo", iteration, predictions, output
    )
    assert [p["sop_instance_uid"] for p in record["pushed"]] == [segs[0].sop_uid] == empty_orthanc.instances()
    assert record["transfer_syntax"] == "explicit_vr_little_endian" and output.is_file()


@pytest.mark.parametrize(
    ("studies", "found"),
    [
        ({"study_date_to": "2025-12-31"}, 0),  # the demo's studies are of 2026-01-01
        ({"study_date_from": "2026-01-01", "study_date_to": "2026-01-01"}, 7),
        ({"study_description": "^$"}, 7),  # the demo writes no StudyDescription: the regex sees ""
        ({"study_description": "liver"}, 0),
        ({"modality": "MR"}, 0),  # no MR series: the annotations' images are not among the dataset's
    ],
)
def test_study_filters_select_the_dataset(
    logged_in: OrthancServer, tmp_path: Path, studies: dict[str, str], found: int
) -> None:
    project = _project(tmp_path, logged_in.dicomweb_url, studies=studies)
    s = settings(project)
    plan = pacs_status(s, "demo", s.rawdata, s.inbox, project / "data/results")
    assert len(plan.annotations) == found
    if studies.get("modality") == "MR":
        assert len(plan.problems) == 7 and "among the dataset's image series" in plan.problems[0]
