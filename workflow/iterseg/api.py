"""iterseg in one call: segment the cases of ``.tar`` archives with a promoted model.

::

    from iterseg.api import analyze

    result = analyze([open("cases.tar", "rb").read()], model="data/results/demo/latest", device="cpu")
    result["status"]                     # "done" or "failed"
    result["dicom_seg_bytes"]["P101.dcm"]  # a DICOM-SEG per DICOM case
    result["nifti_seg_bytes"]["ct.nii.gz"]  # a label NIfTI per NIfTI case (no DICOM to reference)
    result["errors"]                     # case id or "input N" -> what went wrong and the fix

The command line does the same into a folder: ``iterseg analyze IN.tar ... --model M --out DIR``.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from iterseg.rawdata.archives import MAX_BYTES
from iterseg.release.analyzer import (
    DONE,
    FAILED,
    NOTHING,
    arrange_inbox,
    check_device,
    collect,
    predict_cases,
    unpack_inputs,
)
from iterseg.release.installed import InstalledModel, resolve_model

__all__ = ["analyze"]

logger = logging.getLogger(__name__)

_NO_INPUTS = "nothing to analyze: no archive was given; pass the bytes of one or more .tar archives."


def analyze(
    inputs: Sequence[bytes],
    model: str | Path | InstalledModel,
    device: str = "cpu",
    *,
    max_bytes: int = MAX_BYTES,
) -> dict[str, Any]:
    """Segment every case in ``inputs`` with ``model``: a DICOM-SEG per DICOM case, a NIfTI per NIfTI case.

    Everything happens in a temporary folder removed before the call returns: nothing is written
    anywhere else (the model's folder is only read). A bad archive or case never raises: it is
    left out and named in ``errors``, and the other cases are still analyzed (``on_bad_case:
    skip``).

    Parameters
    ----------
    inputs
        The bytes of one or more ``.tar`` archives (plain or gzip-compressed). Each top-level
        folder of an archive holding a DICOM series is one case, its id the folder's name (as an
        inbox folder's: sanitised, several series give ``<folder>_S<SeriesNumber>``); each NIfTI
        file (``.nii.gz``, ``.nii``) at any level is a case of its own, its id the file's stem.
        An id that several cases would share gets ``_<hash>`` of where the case came from, so
        none overwrites another. Archives are checked as a snapshot's are before anything is
        unpacked: plain files and folders only, no ``..`` or absolute paths, bounded size.
    model
        A promoted iteration's results folder (``<project>/data/results/<dataset>/latest``, or
        a ``<date>`` folder beside it; refused unless promoted), a folder ``iterseg install-model``
        wrote, or an :class:`~iterseg.release.installed.InstalledModel`.
    device
        ``cpu``, ``cuda`` (``cuda:N``) or ``mps``.
    max_bytes
        The most one archive may unpack to.

    Returns
    -------
    dict
        ``status``: ``"done"`` when at least one case was predicted, else ``"failed"``;
        ``dicom_seg_bytes``: ``"<case>.dcm"`` -> the SEG's bytes, for every DICOM case predicted;
        ``nifti_seg_bytes``: ``"<case>.nii.gz"`` -> the label image's bytes, for every NIfTI case;
        ``errors``: what was left out -> its message (file, cause, fix): ``"input N"`` for the
        N-th archive (from 1), a case id for a case, ``"inputs"`` when there was nothing to
        analyze, ``"prediction"`` when not one case could be predicted (it lists each).

    Raises
    ------
    ModelArchiveError
        If ``model`` names no model, an iteration that was not promoted, or an incomplete one.
    UsageError
        If ``device`` is none of the above.

    """
    resolved = resolve_model(model)
    check_device(device)
    if not inputs:
        return _result(FAILED, {}, {}, {NOTHING: _NO_INPUTS})
    with tempfile.TemporaryDirectory(prefix="iterseg-analyze-") as tmp:
        return _analyze_in(Path(tmp), inputs, resolved, device, max_bytes)


def _analyze_in(
    root: Path, inputs: Sequence[bytes], model: InstalledModel, device: str, max_bytes: int
) -> dict[str, Any]:
    """:func:`analyze` inside the temporary folder ``root``."""
    unpacked, errors = unpack_inputs(inputs, root, max_bytes)
    places, loose = arrange_inbox(unpacked, root / "inbox")
    errors |= loose
    if not any((root / "inbox").iterdir()):
        what = "none of them could be unpacked" if not unpacked else "they hold no case folder or NIfTI file"
        errors[NOTHING] = (
            f"nothing to analyze: {len(inputs)} archive(s) given, but {what}; each case is a top-level "
            "folder holding its DICOM series, or a NIfTI file."
        )
        return _result(FAILED, {}, {}, errors)
    run, skipped = predict_cases(model, device, root, places)
    errors |= skipped
    dicom, nifti = collect(run, root / "out") if run else ({}, {})
    status = DONE if dicom or nifti else FAILED
    logger.info(
        "analyzed %d archive(s): %d SEG(s), %d NIfTI(s), %d error(s)",
        len(inputs), len(dicom), len(nifti), len(errors),
    )  # fmt: skip
    return _result(status, dicom, nifti, errors)


def _result(
    status: str, dicom: dict[str, bytes], nifti: dict[str, bytes], errors: dict[str, str]
) -> dict[str, Any]:
    return {"status": status, "dicom_seg_bytes": dicom, "nifti_seg_bytes": nifti, "errors": errors}
