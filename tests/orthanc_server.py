"""A real, private Orthanc with its DICOMweb plugin for the PACS tests.

Debian's ``orthanc`` 1.10.1 and ``orthanc-dicomweb`` 1.7 (installed by
``workflow/scripts/setup.sh`` with ``EXTRAS=test`` as root). Each server has its own config
file, storage and SQLite index under the folder it is given, a free HTTP port, HTTP basic
authentication with a random password, no DIMSE listener and no HTTP compression (gzip cuts
WADO-RS to a fortieth of its speed). Orthanc 1.10.1 cannot bind to one address: it listens on
all of them, and ``RemoteAccessAllowed: false`` refuses every client but loopback.

Measured here: ready 0.05-0.2 s after the start, SIGTERM takes about 2.5 s (a fixed wait in
Orthanc's shutdown), SIGKILL a few ms, and the index survives SIGKILL, so :meth:`restart`
after :meth:`kill` finds the stored instances again.

No server outlives the test process: the one that started it kills it at exit (``atexit``),
and Orthanc started from the main thread also gets a parent-death signal (``setpriv
--pdeathsig KILL``), so it dies with a test process killed by SIGKILL too. Housekeeping goes
through Orthanc's native REST API (``/instances``, ``/tools/lookup``, ``DELETE /patients/{id}``),
not through the code under test.
Errors are raised, never printed: this is test infrastructure the fixtures call.
"""

from __future__ import annotations

import atexit
import json
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import requests
from requests.auth import HTTPBasicAuth

BINARY = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
SETUP_HINT = "run EXTRAS=test bash workflow/scripts/setup.sh as root (installs orthanc orthanc-dicomweb)"

# every Orthanc process this test process started and has not reaped yet, for the atexit net
_LIVE: dict[int, subprocess.Popen[bytes]] = {}


def available() -> str | None:
    """Why a private Orthanc cannot start here, or None."""
    missing = [str(p) for p in (BINARY, DICOMWEB_PLUGIN) if not p.exists()]
    return f"missing {missing}: {SETUP_HINT}" if missing else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def _is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file: ``DICM`` after the 128-byte preamble."""
    try:
        with path.open("rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _reap(process: subprocess.Popen[bytes], seconds: float) -> bool:
    """Wait up to ``seconds`` for ``process`` to exit; whether it did."""
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return False
    _LIVE.pop(process.pid, None)
    return True


def _die_with_us() -> list[str]:
    """``setpriv --pdeathsig KILL`` (util-linux, exec's Orthanc) from the main thread, else nothing.

    The death signal comes when the *thread* that forked exits (``prctl(2)``, see
    ``iterseg.processes``): from a short-lived thread it would kill Orthanc with the thread.
    ``setpriv`` rather than ``preexec_fn``: the proxy's threads make code between fork and
    exec unsafe.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None or threading.current_thread() is not threading.main_thread():
        return []
    return [setpriv, "--pdeathsig", "KILL", "--"]


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_LIVE.values()):
        if process.poll() is None:
            process.kill()
        _reap(process, 5)


class OrthancServer:
    """One private Orthanc: config, storage, index and log in ``folder``, on a free port.

    Parameters
    ----------
    folder
        Where the config (``orthanc.json``), the storage, the index and the log
        (``orthanc.log``, appended to across restarts) go; created if missing.
    name
        Orthanc's ``Name``, as ``GET /system`` reports it.
    user
        The one registered user; its password is random per server.
    ready_timeout
        Seconds :meth:`start` waits for ``GET /system`` to answer.

    """

    def __init__(
        self, folder: Path, *, name: str = "ITERSEG-TEST", user: str = "iterseg", ready_timeout: float = 20.0
    ) -> None:
        self.folder = Path(folder)
        self.name = name
        self._user = user
        self._password = secrets.token_urlsafe(18)
        self._port = _free_port()
        self.ready_timeout = ready_timeout
        self.config_path = self.folder / "orthanc.json"
        self.log_path = self.folder / "orthanc.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._session = requests.Session()
        self._session.auth = self.auth
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write_config()

    # ------------------------------------------------------------------ addresses and credentials
    @property
    def port(self) -> int:
        """The HTTP port (the same across restarts)."""
        return self._port

    @property
    def url(self) -> str:
        """Root of the native REST API, ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self._port}"

    @property
    def dicomweb_url(self) -> str:
        """Root of DICOMweb (QIDO-RS, WADO-RS, STOW-RS), for ``DICOMwebClient(url=...)``."""
        return f"{self.url}/dicom-web"

    @property
    def user(self) -> str:
        """The registered user's name."""
        return self._user

    @property
    def password(self) -> str:
        """The registered user's password (random per server)."""
        return self._password

    @property
    def auth(self) -> HTTPBasicAuth:
        """Basic authentication as the registered user."""
        return HTTPBasicAuth(self._user, self._password)

    @property
    def pid(self) -> int | None:
        """The running Orthanc's pid, None when not running."""
        return self._process.pid if self.is_running() and self._process is not None else None

    # ------------------------------------------------------------------ life cycle
    def _write_config(self) -> None:
        config = {
            "Name": self.name,
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "HttpPort": self._port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self._user: self._password},
            "HttpCompressionEnabled": False,
            "DicomServerEnabled": False,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "SaveJobs": False,
            "OverwriteInstances": False,
        }
        self.config_path.write_text(json.dumps(config, indent=2))

    def start(self) -> None:
        """Start Orthanc and wait until it answers ``GET /system``; no-op when running.

        Raises
        ------
        RuntimeError
            Orthanc is not installed, exited, or did not answer within ``ready_timeout``
            (the message ends with the log's tail).

        """
        if self.is_running():
            return
        missing = available()
        if missing is not None:
            raise RuntimeError(f"cannot start Orthanc: {missing}")
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [*_die_with_us(), str(BINARY), str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.folder,
            )  # fmt: skip
        _LIVE[self._process.pid] = self._process
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"Orthanc exited with {self._process.returncode} on start; "
                    f"{self.log_path}:\n{_tail(self.log_path)}"
                )
            try:
                if self._session.get(f"{self.url}/system", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Orthanc did not answer GET /system within {self.ready_timeout} s on port "
                    f"{self._port}; {self.log_path}:\n{_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def is_running(self) -> bool:
        """Whether the Orthanc process runs (it may not be ready yet during :meth:`start`)."""
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, wait up to ``timeout`` seconds (Orthanc takes about 2.5 s), then SIGKILL."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            if _reap(self._process, timeout):
                return
        self.kill()

    def kill(self) -> None:
        """SIGKILL at once, as a crash would, and reap the process."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.kill()
        _reap(self._process, 10)

    def restart(self) -> None:
        """Stop if running, then start again on the same port, storage and index."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and close the housekeeping session."""
        self.stop()
        self._session.close()

    def __enter__(self) -> OrthancServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ native REST housekeeping
    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        response = self._session.request(method, f"{self.url}{path}", timeout=60, **kwargs)
        response.raise_for_status()
        return response

    def upload(self, dicom: Path | str | bytes) -> str:
        """Store one DICOM file (a path or its bytes) with ``POST /instances``; its Orthanc id.

        An identical instance already stored is accepted again (``AlreadyStored``); one with
        the same SOPInstanceUID and other content is kept as it was (``OverwriteInstances``
        is false).
        """
        data = dicom if isinstance(dicom, bytes) else Path(dicom).read_bytes()
        headers = {"Content-Type": "application/dicom"}
        response = self._request("POST", "/instances", data=data, headers=headers)
        return str(response.json()["ID"])

    def upload_folder(self, folder: Path | str) -> int:
        """Store every DICOM file (``DICM`` after the preamble) under ``folder``; how many."""
        files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and _is_dicom_file(p))
        for path in files:
            self.upload(path)
        return len(files)

    def _expand(self, level: str, tag: str) -> list[str]:
        found = self._request("GET", f"/{level}", params={"expand": ""}).json()
        return sorted(str(item["MainDicomTags"][tag]) for item in found)

    def instances(self) -> list[str]:
        """SOPInstanceUIDs of every stored instance, sorted."""
        return self._expand("instances", "SOPInstanceUID")

    def series_uids(self) -> list[str]:
        """SeriesInstanceUIDs of every stored series, sorted."""
        return self._expand("series", "SeriesInstanceUID")

    def delete_all(self) -> None:
        """Delete every patient, and with them every study, series and instance."""
        for patient in self._request("GET", "/patients").json():
            self._request("DELETE", f"/patients/{patient}")

    def instance_bytes(self, sop_instance_uid: str) -> bytes:
        """The stored file of the instance with that SOPInstanceUID, byte for byte.

        Raises
        ------
        KeyError
            No instance with that SOPInstanceUID is stored.

        """
        found = self._request("POST", "/tools/lookup", data=sop_instance_uid).json()
        ids = [item["ID"] for item in found if item.get("Type") == "Instance"]
        if not ids:
            raise KeyError(f"no instance {sop_instance_uid} in Orthanc {self.url}")
        return self._request("GET", f"/instances/{ids[0]}/file").content


def start_orthanc(folder: Path, **kwargs: Any) -> OrthancServer:
    """A started :class:`OrthancServer` in ``folder`` (keywords go to its constructor)."""
    server = OrthancServer(folder, **kwargs)
    server.start()
    return server
