"""QC pictures of one iteration (``iterseg qc``): every inbox prediction and every test case, as montages.

One PNG per case (drawn by :mod:`iterseg.report.montage`), so researchers can skim an iteration's
predictions in the report: ``inbox_<case>.png`` outlines the prediction of an inbox case on its image,
``test_<patient>.png`` a test-set prediction against its reference.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from iterseg.convert.assemble import IGNORE_LABEL
from iterseg.records import Assembled, Predictions, read_record

if TYPE_CHECKING:
    import SimpleITK as sitk

    from iterseg.convert.channels import Channel
    from iterseg.rawdata.inbox import InboxCase

logger = logging.getLogger(__name__)


def _sitk_image(case: InboxCase) -> sitk.Image:
    """The inbox image as predicted: a DICOM series read the way the predict step reads it, or NIfTI."""
    import SimpleITK as sitk

    from iterseg.dicom.series import read_volume

    if case.series is None:
        return sitk.ReadImage(str(case.nifti))
    array, geometry = read_volume(case.series)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(geometry["spacing"])
    image.SetOrigin(geometry["origin"])
    image.SetDirection(geometry["direction"])
    return image


def _inbox_montages(
    results: Path,
    inbox: Path,
    labels: Mapping[str, int],
    colours: Mapping[str, tuple[int, int, int]],
    modality: str,
    out: Path,
    channels: tuple[Channel, ...] = (),
) -> list[Path]:
    """``inbox_<case>.png`` for every prediction of ``predictions.json`` whose case is still in the inbox."""
    import SimpleITK as sitk

    from iterseg.rawdata.inbox import discover_inbox
    from iterseg.report.montage import qc_montage

    written = []
    cases = {c.case_id: c for c in discover_inbox(inbox, modality, channels)} if inbox.is_dir() else {}
    for entry in read_record(results / "predictions.json", Predictions).predictions:
        case = cases.get(entry.case_id)
        if case is None:
            logger.warning("%s: no longer in %s; no QC picture", entry.case_id, inbox)
            continue
        written.append(
            qc_montage(
                _sitk_image(case),
                labels,
                sitk.ReadImage(str(results / entry.label)),
                out / f"inbox_{entry.case_id}.png",
                colours=colours,
                title=f"{entry.case_id}: prediction of iteration {results.name}",
                modality=modality,
            )
        )
    return written


def _test_montages(
    results: Path, assembled: Assembled, labels: Mapping[str, int], modality: str, out: Path
) -> list[Path]:
    """``test_<patient>.png`` for every test case with a prediction: the prediction against the reference.

    A patient with several test cases (e.g. a NIfTI and a DICOM snapshot's) gets one picture per
    case, ``test_<case>.png``; a PatientID that is no safe file name, the case's name too.
    """
    import SimpleITK as sitk

    from iterseg.report.montage import qc_montage

    written = []
    tests = [r for r in assembled.records if r["split"] == "test"]
    per_patient = Counter(r["patient_id"] for r in tests)
    for record in tests:
        predicted = results / "test_predictions" / f"{record['case_id']}.nii.gz"
        if not predicted.is_file():
            continue
        patient = str(record["patient_id"])
        plain = per_patient[patient] == 1 and re.fullmatch(r"[A-Za-z0-9_-]+", patient)
        written.append(
            qc_montage(
                sitk.ReadImage(record["raw_image"]),
                labels,
                sitk.ReadImage(str(predicted)),
                out / f"test_{patient if plain else record['case_id']}.png",
                reference=sitk.ReadImage(record["raw_label"]),
                title=f"{record['patient_id']} (test set): iteration {results.name} vs reference",
                modality=modality,
            )
        )
    return written


def qc_iteration(
    results: Path,
    inbox: Path,
    assembled: Assembled,
    roi_yaml: Path,
    modality: str,
    out: Path,
    channels: tuple[Channel, ...] = (),
) -> list[Path]:
    """QC montages of one iteration: every inbox prediction, and every test case against its reference.

    Parameters
    ----------
    results
        The iteration's results folder (``predictions.json``, ``labels/``, ``test_predictions/``).
    inbox
        The dataset's inbox (only read).
    assembled
        The iteration's ``assembled.json`` (test cases, their images and reference labels).
    roi_yaml
        Label colours (the same as in the SEGs).
    modality
        CT or MR (the grey window).
    out
        Folder receiving ``inbox_<case>.png`` and ``test_<case>.png``.
    channels
        Multi-sequence datasets: the channels, so inbox cases are found as prediction found them
        (the pictures show the reference channel).

    Returns
    -------
    list[Path]
        The PNGs written, inbox cases first.

    """
    from iterseg.roi import load_roi_terms

    labels = {k: v for k, v in assembled.labels.items() if k != IGNORE_LABEL}
    colours = {name: term.colour for name, term in load_roi_terms(roi_yaml).items()}
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    written = _inbox_montages(results, inbox, labels, colours, modality, out, channels)
    written += _test_montages(results, assembled, labels, modality, out)
    logger.info("%d QC picture(s) in %s", len(written), out)
    return written
