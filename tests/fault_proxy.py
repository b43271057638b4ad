"""A reverse proxy on 127.0.0.1 in front of the test Orthanc that breaks answers on demand.

Standard library only (``http.server`` + ``http.client``): every request (method, path and
query, headers with ``Authorization``, body) goes to the upstream, and the answer streams back
framed as the upstream framed it (a ``Content-Length``, chunks, or the end of the connection),
until a fault is set:

- :meth:`FaultProxy.truncate_wado` cuts WADO-RS retrieve answers (GET under ``/dicom-web/``
  with ``/series/`` or ``/instances/`` in the path, answered ``multipart/related``; not QIDO's
  JSON, not ``/metadata``): the upstream's headers go out, then only a prefix of the body,
  then the connection is closed, as when the server dies mid-answer;
- :meth:`FaultProxy.fail_next` answers the next requests with an HTTP error status;
- :meth:`FaultProxy.reset` returns to pass-through.

An upstream that cannot be reached is answered ``502 Bad Gateway``.

Measured (Orthanc 1.10.1 + DICOMweb 1.7, dicomweb-client 0.61.2, requests 2.34, urllib3 2.8,
pydicom 3.0.2), on a 5-instance series of CT_small (39 kB parts):

Orthanc frames a WADO-RS answer of two or more parts (a series or study of several
instances) with ``Connection: close`` and **no** ``Content-Length``: the body ends when the
connection does, so a server killed mid-answer is indistinguishable, at the HTTP level, from a
complete answer. (A one-part answer, ``retrieve_instance`` or a one-instance series, has a
``Content-Length``: see below.) ``truncate_wado(..., content_length=None)``, the default,
keeps the upstream's framing. ``DICOMwebClient.retrieve_series`` then raises nothing; it splits
what arrived at the boundaries and hands the last, unterminated part to ``pydicom.dcmread``,
so the result depends on where the cut falls in that part:

- at a part boundary: a **shorter list** (4 of 5 datasets, all intact);
- inside the pixel data (``parts=3``, or ``keep=0.7``): a list of 4 where the 4th dataset has
  **truncated PixelData** (13 238 of 32 768 bytes), no warning; only decoding the pixels fails;
- in its data set before the pixel data: 4 datasets, the 4th holding only the elements
  before the cut (no PixelData);
- within the first ~200 bytes of the part: ``ValueError`` ("subsection not found", the part's
  headers are cut) or ``pydicom.errors.InvalidDicomError`` (no ``DICM``);
- nothing of the body: an empty list.

With a ``Content-Length`` (Orthanc's one-part answers, or ``content_length=True``) urllib3
sees the short read and the client raises ``requests.exceptions.ChunkedEncodingError``
("Connection broken: IncompleteRead"): the body is read inside the client's retried GET and
the client retries every exception, so it raises after 5 tries and ≈ 30 s with the default
retry settings, at once with ``set_http_retry_params(retry=False)``.

So check the count against QIDO's NumberOfSeriesRelatedInstances (or the expected SOP UIDs)
*and* that every dataset's pixel data has its expected length.

Module for the fixtures: errors are raised, the log goes to ``logging`` (never printed).
"""

from __future__ import annotations

import http.client
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

# headers that concern one connection only (RFC 9110 7.6.1), not forwarded either way
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
     "transfer-encoding", "upgrade", "proxy-connection"}
)  # fmt: skip
CHUNK = 1 << 16


@dataclass(frozen=True)
class _Truncation:
    keep: float | int | None
    parts: int | None
    content_length: bool | None


class _Faults:
    """The proxy's fault settings and counters, shared by its handler threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.truncation: _Truncation | None = None
        self.fail_count = 0
        self.fail_status = 503
        self.seen: list[tuple[str, str]] = []
        self.truncated = 0
        self.wado_hook: Callable[[], None] | None = None
        self.wado_hook_at = 0  # the WADO-RS retrieve (1-based) before which the hook runs
        self.wado_seen = 0


def _is_wado_retrieve(method: str, path: str) -> bool:
    route = path.split("?", 1)[0]
    return (
        method == "GET"
        and "/dicom-web/" in route
        and ("/series/" in route or "/instances/" in route)
        and not route.rstrip("/").endswith("/metadata")
    )


def _boundary(content_type: str) -> bytes | None:
    for item in content_type.split(";")[1:]:
        name, _, value = item.strip().partition("=")
        if name.lower() == "boundary":
            return value.strip('"').encode()
    return None


def _cut(body: bytes, content_type: str, cut: _Truncation) -> int:
    """How many bytes of ``body`` to send: a fraction, a count, or ``parts`` whole parts and half the next."""
    keep, parts = cut.keep, cut.parts
    if parts is not None:
        boundary = _boundary(content_type)
        if boundary is None:
            return len(body) // 2
        delimiter = b"\r\n--" + boundary
        ends = []
        start = 0
        while (found := body.find(delimiter, start)) >= 0:
            ends.append(found)
            start = found + len(delimiter)
        if len(ends) <= parts:  # fewer parts than asked: cut in the middle of the last one
            return (ends[-2] + ends[-1]) // 2 if len(ends) >= 2 else len(body) // 2
        begin = ends[parts - 1] + len(delimiter) if parts > 0 else 0
        return (begin + ends[parts]) // 2
    if isinstance(keep, float):
        return int(len(body) * keep)
    return min(int(keep or 0), len(body))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("proxy %s: " + format, self.address_string(), *args)

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(data)
                data += self.rfile.read(size)
                self.rfile.readline()
        length = self.headers.get("Content-Length")
        return self.rfile.read(int(length)) if length is not None else None

    def _forward(self) -> None:
        faults = self.server.faults
        body = self._read_body()
        with faults.lock:
            faults.seen.append((self.command, self.path))
            hook = None
            if _is_wado_retrieve(self.command, self.path):
                faults.wado_seen += 1
                if faults.wado_hook is not None and faults.wado_seen == faults.wado_hook_at:
                    hook, faults.wado_hook = faults.wado_hook, None
            failing = faults.fail_count > 0
            if failing:
                faults.fail_count -= 1
            status = faults.fail_status
        if hook is not None:
            hook()  # e.g. kill the upstream: this request then finds it gone
        if failing:
            self._answer(status, b"fault injected by tests/fault_proxy.py\n")
            return
        skip = HOP_BY_HOP | {"host"}
        headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        host, port = self.server.upstream_host, self.server.upstream_port
        upstream = http.client.HTTPConnection(host, port, timeout=60)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
        except OSError as error:
            upstream.close()
            self._answer(502, f"upstream unreachable: {error}\n".encode())
            return
        try:
            self._relay(response)
        finally:
            upstream.close()

    def _answer(self, status: int, text: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    def _relay(self, response: http.client.HTTPResponse) -> None:
        content_type = response.getheader("Content-Type", "")
        with self.server.faults.lock:
            truncation = self.server.faults.truncation
        wado = _is_wado_retrieve(self.command, self.path) and content_type.startswith("multipart/related")
        if truncation is not None and wado:
            self._relay_truncated(response, content_type, truncation)
            return
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        no_body = self.command == "HEAD" or response.status in (204, 304) or 100 <= response.status < 200
        # framed as upstream: its Content-Length (sent above), chunks, or the end of the connection
        chunked = response.chunked and not no_body
        until_close = response.getheader("Content-Length") is None and not chunked and not no_body
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        if until_close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if no_body:
            return
        while data := response.read(CHUNK):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _relay_truncated(
        self, response: http.client.HTTPResponse, content_type: str, cut: _Truncation
    ) -> None:
        body = response.read()
        sent = _cut(body, content_type, cut)
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP and (
                cut.content_length is None or name.lower() != "content-length"
            ):
                self.send_header(name, value)
        if cut.content_length:
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body[:sent])
        self.wfile.flush()
        self.close_connection = True
        with self.server.faults.lock:
            self.server.faults.truncated += 1
        logger.debug("proxy: truncated %s to %d of %d bytes", self.path, sent, len(body))

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _forward  # noqa: N815 (http.server's names)


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str, faults: _Faults) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"upstream must be http://HOST:PORT, not {upstream!r}")
        self.upstream_host, self.upstream_port = parts.hostname, parts.port
        self.faults = faults
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        # clients hanging up on a cut answer are the point of the faults: no tracebacks on stderr
        logger.debug("proxy: client %s went away", client_address, exc_info=True)


class FaultProxy:
    """A threaded reverse proxy to ``upstream`` on a free port of 127.0.0.1, started at once.

    Parameters
    ----------
    upstream
        ``http://HOST:PORT`` of the server behind it (``OrthancServer.url``); paths are kept,
        so ``proxy.url + "/dicom-web"`` is the proxied DICOMweb root.

    """

    def __init__(self, upstream: str) -> None:
        self._faults = _Faults()
        self._server = _ProxyServer(upstream, self._faults)
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        """The proxy's port."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` of the proxy (the upstream's paths follow)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests_seen(self) -> int:
        """How many requests reached the proxy since it started (faults included)."""
        with self._faults.lock:
            return len(self._faults.seen)

    @property
    def seen(self) -> list[tuple[str, str]]:
        """``(method, path)`` of every request so far, in order."""
        with self._faults.lock:
            return list(self._faults.seen)

    @property
    def truncated(self) -> int:
        """How many answers were cut short."""
        with self._faults.lock:
            return self._faults.truncated

    def truncate_wado(
        self, keep: float | int | None = None, *, parts: int | None = None, content_length: bool | None = None
    ) -> None:
        """Cut every WADO-RS retrieve answer from now on (until :meth:`reset`).

        Parameters
        ----------
        keep
            A float: the fraction of the body sent; an int: the number of bytes sent.
        parts
            Instead of ``keep``: send this many whole parts of the multipart body and half of
            the next (of the last one if there are fewer), so ``parts`` instances arrive intact
            and one more arrives cut.
        content_length
            None: the headers as the upstream sent them (Orthanc: no ``Content-Length``, so
            nothing at the HTTP level shows the loss, as when Orthanc is killed mid-answer).
            True: announce the full body's length (the client can tell the body is short).
            False: drop any ``Content-Length``.

        """
        if (keep is None) == (parts is None):
            raise ValueError("give either keep or parts")
        if isinstance(keep, float) and not 0 <= keep < 1:
            raise ValueError(f"keep as a fraction must be in [0, 1), not {keep}")
        with self._faults.lock:
            self._faults.truncation = _Truncation(keep, parts, content_length)

    def before_wado(self, count: int, hook: Callable[[], None]) -> None:
        """Run ``hook`` once, just before forwarding the ``count``-th WADO-RS retrieve from now on."""
        with self._faults.lock:
            self._faults.wado_hook, self._faults.wado_hook_at = hook, self._faults.wado_seen + count

    def fail_next(self, count: int = 1, status: int = 503) -> None:
        """Answer the next ``count`` requests with ``status`` without asking the upstream."""
        with self._faults.lock:
            self._faults.fail_count, self._faults.fail_status = count, status

    def reset(self) -> None:
        """Back to plain pass-through (the counters stay)."""
        with self._faults.lock:
            self._faults.truncation = None
            self._faults.fail_count = 0

    def close(self) -> None:
        """Stop serving and free the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
