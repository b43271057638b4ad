"""A DICOMweb connection to the dataset's PACS: dicomweb-client with our login, bounded retries, clear errors.

dicomweb-client retries every failed request five times with exponential back-off (about 30 s
before a PACS that is down is reported); here each request gets ``attempts`` tries 0.2 s apart,
doubling. Every failure becomes one :class:`~iterseg.errors.PacsError` line naming the PACS, what
was being done and the fix; the message never holds a password or token, and the URL cannot
(the config refuses credentials in it).
"""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from iterseg.errors import PacsError
from iterseg.pacs.settings import AuthSettings, PacsSettings

if TYPE_CHECKING:
    import requests
    from dicomweb_client.api import DICOMwebClient

logger = logging.getLogger(__name__)

RETRIED_STATUS = (
    HTTPStatus.TOO_MANY_REQUESTS,
    HTTPStatus.REQUEST_TIMEOUT,
    HTTPStatus.BAD_GATEWAY,
    HTTPStatus.SERVICE_UNAVAILABLE,
    HTTPStatus.GATEWAY_TIMEOUT,
)
FIRST_WAIT_MS = 200  # back-off before the second try; doubles after each


@dataclass(frozen=True)
class Pacs:
    """An open connection: the DICOMweb client and the session it logs in with."""

    settings: PacsSettings
    client: DICOMwebClient
    session: requests.Session

    @property
    def url(self) -> str:
        """The DICOMweb root, as configured (no credentials)."""
        return self.settings.url


def _bearer(token: str) -> Any:
    import requests

    class BearerAuth(requests.auth.AuthBase):
        def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
            request.headers["Authorization"] = f"Bearer {token}"
            return request

    return BearerAuth()


def _env(name: str, key: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise PacsError(
            f"environment variable {name} (config key {key}) is not set: export it in the shell that "
            "runs iterseg or snakemake (the config names the variable, never the secret)."
        )
    return value


def credentials(auth: AuthSettings, url: str, dataset: str) -> Any:
    """The requests auth object of ``auth`` (None: no login).

    Raises
    ------
    PacsError
        A named environment variable is unset, or the netrc file is missing, unreadable or has
        no entry for the PACS host.

    """
    import requests

    key = f"datasets.{dataset}.pacs.auth"
    if auth.username_env and auth.password_env:
        user = _env(auth.username_env, f"{key}.username_env")
        return requests.auth.HTTPBasicAuth(user, _env(auth.password_env, f"{key}.password_env"))
    if auth.token_env:
        return _bearer(_env(auth.token_env, f"{key}.token_env"))
    if auth.netrc is not None:
        host = urlsplit(url).hostname or ""
        try:
            entry = netrc.netrc(str(auth.netrc)).authenticators(host)
        except (OSError, netrc.NetrcParseError) as exc:
            raise PacsError(f"{auth.netrc} (config key {key}.netrc): cannot be read ({exc}).") from None
        if entry is None:
            raise PacsError(f"{auth.netrc} (config key {key}.netrc): no `machine {host}` entry; add one.")
        return requests.auth.HTTPBasicAuth(entry[0], entry[2] or "")
    return None


def connect(settings: PacsSettings, dataset: str, attempts: int | None = None) -> Pacs:
    """A client of the dataset's PACS (no request is made yet).

    Parameters
    ----------
    settings
        The dataset's PACS settings.
    dataset
        Its name, for messages.
    attempts
        Tries per request (default ``settings.attempts``); 1 when the caller retries itself.

    """
    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    session.auth = credentials(settings.auth, settings.url, dataset)
    client = DICOMwebClient(url=settings.url, session=session, timeout=settings.timeout_s)
    tries = settings.attempts if attempts is None else attempts
    client.set_http_retry_params(
        retry=tries > 1,
        max_attempts=tries,
        wait_exponential_multiplier=FIRST_WAIT_MS // 2,  # retrying waits multiplier * 2**attempt
        retriable_error_codes=RETRIED_STATUS,
    )
    return Pacs(settings, client, session)


def _status_message(status: int, reason: str, url: str, doing: str, auth: AuthSettings) -> str:
    if status == HTTPStatus.UNAUTHORIZED:
        where = (
            f"the environment variables {auth.username_env} and {auth.password_env}"
            if auth.username_env
            else f"the environment variable {auth.token_env}"
            if auth.token_env
            else f"{auth.netrc}"
            if auth.netrc
            else "pacs.auth (none is configured)"
        )
        return (
            f"PACS {url} refused the login (HTTP 401) while {doing}: check the credentials in {where} "
            "(not shown)."
        )
    if status == HTTPStatus.FORBIDDEN:
        return f"PACS {url} forbids this user to be {doing} (HTTP 403): ask its administrator for access."
    if status == HTTPStatus.NOT_FOUND:
        return (
            f"PACS {url} answered 404 Not Found while {doing}: is the url the DICOMweb root "
            "(Orthanc: http://host:8042/dicom-web, with its DICOMweb plugin enabled)?"
        )
    return f"PACS {url} answered HTTP {status} {reason} while {doing}."


def _cause(exc: BaseException) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out", "Connection reset"):
        if marker in text:
            return marker.lower()
    return type(exc).__name__


@contextmanager
def pacs_errors(pacs: Pacs, doing: str) -> Iterator[None]:
    """Turn any failure of a request to ``pacs`` into one :class:`PacsError` line (``doing``: what for)."""
    import requests
    import retrying

    url, auth = pacs.url, pacs.settings.auth
    try:
        yield
    except requests.HTTPError as exc:
        response = exc.response
        status, reason = (response.status_code, response.reason) if response is not None else (0, "")
        raise PacsError(_status_message(status, reason, url, doing, auth)) from None
    except retrying.RetryError as exc:  # retried status codes, every try used up
        response = exc.last_attempt.value
        raise PacsError(
            _status_message(response.status_code, response.reason, url, doing, auth)
            + f" ({pacs.settings.attempts} tries)"
        ) from None
    except requests.Timeout:
        raise PacsError(
            f"PACS {url} did not answer within {pacs.settings.timeout_s:g} s while {doing}; raise "
            "pacs.timeout_s or check the PACS."
        ) from None
    except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
        raise PacsError(
            f"PACS {url} cannot be reached while {doing} ({_cause(exc)}, {pacs.settings.attempts} tries): "
            "is it running, and is the url right?"
        ) from None
