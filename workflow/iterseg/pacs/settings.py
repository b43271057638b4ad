"""A dataset's ``pacs:`` settings: where the PACS is, how to log in, which studies are the dataset's.

Credentials are never in the config: it names the environment variables (or the netrc file)
that hold them, and they are read only when a connection is made.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iterseg.dicom.seg_options import SegTransferSyntax
from iterseg.errors import ConfigError

PULL_RECORD = (
    "pacs_pull.json"  #: provenance of a pulled snapshot, at its root (not DICOM: never read as data)
)


@dataclass(frozen=True)
class AuthSettings:
    """Where the PACS credentials come from: environment variables, or a netrc file. All None: no login."""

    username_env: str | None = None
    password_env: str | None = None
    token_env: str | None = None  # a bearer token (OAuth/OIDC front ends)
    netrc: Path | None = None


@dataclass(frozen=True)
class StudyFilter:
    """Which studies on the PACS belong to the dataset (all given conditions must hold)."""

    patient_ids: tuple[str, ...] = ()  # DICOM wildcard patterns (* and ?); empty: any patient
    study_date_from: dt.date | None = None
    study_date_to: dt.date | None = None
    modality: str = "CT"  # of the image series; annotations are SEG or RTSTRUCT
    study_description: re.Pattern[str] | None = None  # searched in StudyDescription
    orthanc_label: str | None = None  # Orthanc >= 1.12 labels, via its REST API

    def date_range(self) -> str | None:
        """The QIDO StudyDate range value (``YYYYMMDD-YYYYMMDD``, open ends allowed), or None."""
        if self.study_date_from is None and self.study_date_to is None:
            return None
        start = self.study_date_from.strftime("%Y%m%d") if self.study_date_from else ""
        end = self.study_date_to.strftime("%Y%m%d") if self.study_date_to else ""
        return f"{start}-{end}"

    def describe(self) -> dict[str, Any]:
        """The filter as the pull record shows it."""
        return {
            "patient_ids": list(self.patient_ids),
            "study_date": self.date_range(),
            "modality": self.modality,
            "study_description": self.study_description.pattern if self.study_description else None,
            "orthanc_label": self.orthanc_label,
        }


@dataclass(frozen=True)
class PushSettings:
    """Whether promoted iterations push their predicted SEGs, and in which transfer syntax."""

    enabled: bool = True
    transfer_syntax: SegTransferSyntax = SegTransferSyntax.EXPLICIT_VR_LITTLE_ENDIAN


@dataclass(frozen=True)
class PacsSettings:
    """One dataset's PACS (``datasets.<name>.pacs``)."""

    url: str  # the DICOMweb root, e.g. http://pacs:8042/dicom-web
    auth: AuthSettings
    studies: StudyFilter
    push: PushSettings
    attempts: int = 3  # per request, and per push round
    timeout_s: float = 60.0


def _date(value: str | None, key: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"config key {key}: {value!r} is not a date YYYY-MM-DD.") from None


def _regex(value: str | None, key: str) -> re.Pattern[str] | None:
    if value is None:
        return None
    try:
        return re.compile(value)
    except re.error as exc:
        raise ConfigError(f"config key {key}: {value!r} is not a regular expression ({exc}).") from None


def pacs_settings(name: str, raw: Mapping[str, Any], modality: str) -> PacsSettings:
    """The settings of ``datasets.<name>.pacs`` (already schema-validated, defaults filled).

    Raises
    ------
    ConfigError
        A date that is not one, a regex that does not compile, a date range that ends before it starts.

    """
    key = f"datasets.{name}.pacs"
    auth, studies, push = raw["auth"], raw["studies"], raw["push"]
    methods = [m for m in ("username_env", "token_env", "netrc") if auth.get(m)]
    if len(methods) > 1:
        raise ConfigError(f"config key {key}.auth: choose one way to log in, not {' and '.join(methods)}.")
    netrc = auth.get("netrc")
    found = StudyFilter(
        patient_ids=tuple(studies["patient_ids"]),
        study_date_from=_date(studies.get("study_date_from"), f"{key}.studies.study_date_from"),
        study_date_to=_date(studies.get("study_date_to"), f"{key}.studies.study_date_to"),
        modality=studies.get("modality") or modality,
        study_description=_regex(studies.get("study_description"), f"{key}.studies.study_description"),
        orthanc_label=studies.get("orthanc_label"),
    )
    if found.study_date_from and found.study_date_to and found.study_date_to < found.study_date_from:
        raise ConfigError(f"config key {key}.studies: study_date_to is before study_date_from.")
    return PacsSettings(
        url=raw["url"].rstrip("/"),
        auth=AuthSettings(
            username_env=auth.get("username_env"),
            password_env=auth.get("password_env"),
            token_env=auth.get("token_env"),
            netrc=Path(netrc).expanduser() if netrc else None,
        ),
        studies=found,
        push=PushSettings(bool(push["enabled"]), SegTransferSyntax(push["transfer_syntax"])),
        attempts=int(raw["attempts"]),
        timeout_s=float(raw["timeout_s"]),
    )


def unset_credentials(settings: PacsSettings) -> list[str]:
    """The credential environment variables ``settings`` names that are not set (checked at start-up)."""
    import os

    names = [settings.auth.username_env, settings.auth.password_env, settings.auth.token_env]
    return [name for name in names if name and not os.environ.get(name)]
