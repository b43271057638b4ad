"""The test PACS itself: a private Orthanc (``orthanc_server``) and the fault proxy in front of it.

The PACS tests rely on what is checked here: authentication is on, DICOMweb (QIDO, WADO,
STOW) works through dicomweb-client with basic auth, stored files come back byte for byte,
the proxy cuts a multi-instance WADO-RS answer the way a server killed mid-answer does (and
dicomweb-client reports no error for it), and ``kill()`` really takes the server away.
"""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_auth
from fault_proxy import FaultProxy
from orthanc_server import OrthancServer, start_orthanc
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

pytestmark = pytest.mark.integration

CT_SMALL = Path(str(get_testdata_file("CT_small.dcm")))
NUMBER_OF_SERIES_RELATED_INSTANCES = "00201209"


@pytest.fixture(scope="module")
def module_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    with start_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture
def orthanc(module_orthanc: OrthancServer) -> OrthancServer:
    """The module's Orthanc, emptied."""
    module_orthanc.delete_all()
    return module_orthanc


def client(url: str, server: OrthancServer) -> DICOMwebClient:
    """A DICOMweb client on ``url`` with the server's credentials; no retries (fails fast)."""
    session = create_session_from_auth(requests.auth.HTTPBasicAuth(server.user, server.password))
    web = DICOMwebClient(url=url, session=session)
    web.set_http_retry_params(retry=False)
    return web


def ct_series(n: int) -> list[pydicom.Dataset]:
    """``n`` copies of CT_small with new SOP UIDs in one new series, as read from Part 10 files."""
    base = pydicom.dcmread(CT_SMALL)
    series_uid = generate_uid()
    datasets: list[pydicom.Dataset] = []
    for number in range(1, n + 1):
        ds = base.copy()
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = number
        ds.preamble = b"\0" * 128  # without one pydicom 3 writes no DICM, and WADO cannot parse it
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        datasets.append(pydicom.dcmread(io.BytesIO(buffer.getvalue())))
    return datasets


def refuses_connections(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_authentication_is_required(orthanc: OrthancServer) -> None:
    assert requests.get(f"{orthanc.url}/system", timeout=5).status_code == 401
    wrong = requests.auth.HTTPBasicAuth(orthanc.user, orthanc.password + "x")
    assert requests.get(f"{orthanc.url}/system", auth=wrong, timeout=5).status_code == 401
    assert requests.get(f"{orthanc.dicomweb_url}/studies", timeout=5).status_code == 401
    answer = requests.get(f"{orthanc.url}/system", auth=orthanc.auth, timeout=5)
    assert answer.status_code == 200 and answer.json()["Name"] == orthanc.name
    with pytest.raises(requests.HTTPError):
        DICOMwebClient(
            url=orthanc.dicomweb_url, session=create_session_from_auth(wrong)
        ).search_for_studies()  # fmt: skip


def test_stow_qido_and_stored_bytes_round_trip(orthanc: OrthancServer) -> None:
    web = client(orthanc.dicomweb_url, orthanc)
    ds = pydicom.dcmread(CT_SMALL)
    assert ds.preamble is not None
    web.store_instances([ds])
    found = web.search_for_series(search_filters={"SeriesInstanceUID": ds.SeriesInstanceUID})
    assert [s["0020000E"]["Value"][0] for s in found] == [ds.SeriesInstanceUID]
    assert orthanc.instances() == [ds.SOPInstanceUID]
    assert orthanc.series_uids() == [ds.SeriesInstanceUID]
    assert orthanc.instance_bytes(ds.SOPInstanceUID) == CT_SMALL.read_bytes()
    retrieved = web.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert retrieved.PixelData == ds.PixelData
    orthanc.delete_all()
    assert orthanc.instances() == []


def test_upload_folder_takes_every_dicom_file(orthanc: OrthancServer, tmp_path: Path) -> None:
    for i, ds in enumerate(ct_series(3)):
        (tmp_path / "sub" / str(i)).mkdir(parents=True)
        ds.save_as(tmp_path / "sub" / str(i) / "slice", enforce_file_format=True)
    (tmp_path / "notes.txt").write_text("not DICOM")
    assert orthanc.upload_folder(tmp_path) == 3
    assert len(orthanc.instances()) == 3


def test_proxy_passes_through_and_counts(orthanc: OrthancServer) -> None:
    series = ct_series(3)
    with FaultProxy(orthanc.url) as proxy:
        web = client(proxy.url + "/dicom-web", orthanc)
        web.store_instances(series)  # STOW's multipart body, through the proxy
        study, series_uid = series[0].StudyInstanceUID, series[0].SeriesInstanceUID
        assert len(web.retrieve_series(study, series_uid)) == 3
        proxy.fail_next(1, 503)
        with pytest.raises(requests.HTTPError, match="503"):
            web.search_for_series()
        assert len(web.search_for_series()) == 1
        assert proxy.requests_seen == 4
        assert [method for method, _ in proxy.seen] == ["POST", "GET", "GET", "GET"]
    assert sorted(orthanc.instances()) == sorted(ds.SOPInstanceUID for ds in series)


def test_truncated_series_answer_is_not_an_error(orthanc: OrthancServer) -> None:
    """Orthanc frames a multi-part answer by closing the connection: a cut one looks complete."""
    series = ct_series(5)
    for ds in series:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        orthanc.upload(buffer.getvalue())
    study, series_uid = series[0].StudyInstanceUID, series[0].SeriesInstanceUID
    with FaultProxy(orthanc.url) as proxy:
        web = client(proxy.url + "/dicom-web", orthanc)
        proxy.truncate_wado(parts=3)  # 3 whole instances, then half of the 4th
        # QIDO is not cut, and knows how many there should be
        (qido,) = web.search_for_series(search_filters={"SeriesInstanceUID": series_uid})
        assert qido[NUMBER_OF_SERIES_RELATED_INSTANCES]["Value"] == [5]
        got = web.retrieve_series(study, series_uid)  # no exception
        assert len(got) == 4 and proxy.truncated == 1
        for ds, expected in zip(got[:3], series[:3], strict=True):
            assert ds.SOPInstanceUID == expected.SOPInstanceUID and ds.PixelData == expected.PixelData
        assert got[3].SOPInstanceUID == series[3].SOPInstanceUID
        assert 0 < len(got[3].PixelData) < len(series[3].PixelData)  # silently short
        with pytest.raises(ValueError, match="less than expected"):
            got[3].pixel_array  # noqa: B018 (decoding is what fails)
        # announcing the full length makes the loss visible to the client
        proxy.truncate_wado(parts=3, content_length=True)
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            web.retrieve_series(study, series_uid)
        proxy.reset()
        assert len(web.retrieve_series(study, series_uid)) == 5


def test_kill_takes_the_server_away_and_restart_keeps_the_data(tmp_path: Path) -> None:
    server = start_orthanc(tmp_path / "orthanc")
    try:
        server.upload(CT_SMALL)
        port, pid = server.port, server.pid
        assert pid is not None and server.is_running()
        server.kill()
        assert not server.is_running() and server.pid is None
        assert refuses_connections(port)
        assert not Path(f"/proc/{pid}").exists()  # reaped, not a zombie
        server.restart()
        assert server.port == port and server.instances() == [pydicom.dcmread(CT_SMALL).SOPInstanceUID]
        server.stop()
        assert not server.is_running() and refuses_connections(port)
    finally:
        server.kill()
