"""Label maps -> DICOM-SEG with highdicom, one segment per ROI label, frames on source slices."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import DeflatedExplicitVRLittleEndian

from iterseg import __version__
from iterseg.dicom.codes import Terminology, segment_description

logger = logging.getLogger(__name__)

SEG_MANUFACTURER = "iterseg"
ALGORITHM_NAME = "iterseg"  # how a SEG of ours is recognised when it comes back unedited
LEGACY_ALGORITHM_NAMES = ("iterseg nnU-Net",)  # written by earlier versions


class SegType(StrEnum):
    """DICOM SegmentationType values the exporter writes."""

    BINARY = "binary"
    LABELMAP = "labelmap"


def character_set(source: pydicom.Dataset) -> str | list[str] | None:
    """The source's Specific Character Set as highdicom accepts it; None for the default repertoire.

    Real scanners write (0008,0005) present but empty (a GE CT), or multi-valued with an empty
    first value (ISO 2022 code extensions); both mean the default repertoire for that value,
    which highdicom rejects as ``''``.
    """
    value = source.get("SpecificCharacterSet")
    values = (
        [str(v) for v in value]
        if isinstance(value, (list, pydicom.multival.MultiValue))
        else [str(value or "")]
    )
    if not any(values):
        return None
    if len(values) == 1:
        return values[0]
    return ["ISO 2022 IR 6" if not v else v for v in values]


def export_seg(
    label_map: np.ndarray,
    source: Sequence[pydicom.Dataset],
    labels: Mapping[str, int],
    path: Path,
    series_description: str,
    algorithm_version: str,
    seg_type: SegType = SegType.BINARY,
    terms: Mapping[str, Terminology] | None = None,
) -> pydicom.Dataset:
    """Write ``label_map`` as a BINARY DICOM-SEG referencing ``source``.

    Parameters
    ----------
    label_map
        (slices, rows, columns) integer labels; slice k belongs to ``source[k]``.
    source
        The image series' datasets sorted by position along the slice normal (headers suffice).
    labels
        nnU-Net's label mapping (name -> value, background 0); segment numbers follow the values.
    path
        Output file.
    series_description
        SeriesDescription shown by viewers.
    algorithm_version
        Model identification (e.g. dataset and iteration) recorded in each segment.
    seg_type
        BINARY (default, every viewer) or LABELMAP (DICOM 2024; viewer support is young).
        Either way the file is written Deflated Explicit VR Little Endian: 1-bit frames of
        mostly background compress about 20-fold, and every DICOM toolkit reads deflate.
    terms
        Coded category/type and colour per label name (``roi.load_roi_terms``); labels not in
        it use the built-in table.

    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if label_map.shape != (len(source), int(source[0].Rows), int(source[0].Columns)):
        raise ValueError(f"label map {label_map.shape} does not match {len(source)} source slices")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME,
        family=codes.cid7162.ArtificialIntelligence,
        version=algorithm_version[:64],
    )
    named = sorted((value, name) for name, value in labels.items() if value > 0)
    # A label map of segment numbers (1..n), for BINARY too: highdicom splits it into segments
    # itself, ~3x faster and n-fold smaller in memory than a stack of boolean masks.
    values = np.array([value for value, _ in named])
    if np.array_equal(values, np.arange(1, len(named) + 1)) and label_map.dtype in (np.uint8, np.uint16):
        pixels = label_map
    else:
        lookup = np.zeros(int(label_map.max(initial=0)) + 1, np.uint16)
        lookup[values[values < len(lookup)]] = np.arange(1, len(named) + 1)[values < len(lookup)]
        pixels = lookup[label_map]
    pixels = pixels.astype(np.uint8 if len(named) < 256 else np.uint16, copy=False)
    descriptions = [
        segment_description(i, name, algorithm, (terms or {}).get(name))
        for i, (_, name) in enumerate(named, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=list(source),
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues(seg_type.value.upper()),
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=SEG_MANUFACTURER,
        manufacturer_model_name="iterseg",
        software_versions=__version__,
        device_serial_number="none",
        series_description=series_description[:64],
        content_label="ITERSEG",
        content_description=series_description[:64],
        omit_empty_frames=bool(label_map.any()),  # highdicom needs one frame when all are empty
        specific_character_set=character_set(source[0]),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    seg.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    seg.save_as(tmp, enforce_file_format=True)
    tmp.replace(path)
    return seg
