"""One image series + its annotation -> ``<case>_0000.nii.gz`` and ``<case>.nii.gz``, then checked.

The image is read with SimpleITK (as med-imagetools reads it) from our geometrically sorted file
list, after the same grid checks the SEG export applies: a missing slice, mixed pixel sizes or
gantry tilt would otherwise be written with an averaged spacing, silently shifting slices. The
annotation is drawn on that grid by ``seg_read`` or ``rtstruct_raster``, and the written label
map is read back and compared with an independent reading of the annotation (``convert_check``).
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from iterseg.convert.check import RoiCheck, check_case
from iterseg.convert.image_identity import voxel_hash
from iterseg.convert.nifti import write_nifti
from iterseg.dicom.canvas import LabelCanvas, MaskStrategy, SliceGrid, slice_grid
from iterseg.dicom.geometry import series_grid
from iterseg.dicom.rtstruct_reader import read_rtstruct
from iterseg.dicom.seg_reader import read_seg
from iterseg.dicom.series import ImageSeries, read_dataset, sort_by_position
from iterseg.errors import ConversionError, DicomReadError
from iterseg.roi import label_values

logger = logging.getLogger(__name__)

INT16_MIN, INT16_MAX = -32768, 32767


@dataclass(frozen=True)
class PairJob:
    """What converting one pair needs (picklable, for worker processes)."""

    case_id: str
    patient_id: str
    image_files: tuple[Path, ...]
    annotation_kind: str  # SEG or RTSTRUCT
    annotation_files: tuple[Path, ...]
    image_out: Path
    label_out: Path
    roi_labels: dict[str, list[str]]
    strategy: str
    # multi-sequence cases: the series files of channels 1.. and where each goes
    channel_files: tuple[tuple[Path, ...], ...] = ()
    channel_outs: tuple[Path, ...] = ()


@dataclass(frozen=True)
class PairResult:
    """A converted pair: its check rows, the labels drawn empty, and the voxels compared."""

    case_id: str
    checks: list[RoiCheck] = field(default_factory=list)
    empty_labels: tuple[str, ...] = ()
    voxels: int = 0
    channels: tuple[dict[str, Any], ...] = ()  # of channels 1..: how each reached the reference grid
    voxel_hash: str = ""  # iterseg.convert.image_identity: the image, whatever its source
    error: str = ""  # one line: file, cause, fix; set instead of the rest when the pair failed


def _image_series(job: PairJob, image_files: tuple[Path, ...] | None = None) -> tuple[ImageSeries, SliceGrid]:
    image_files = image_files or job.image_files
    headers = [read_dataset(f, stop_before_pixels=True) for f in image_files]
    try:
        datasets, files = sort_by_position(headers, list(image_files))
    except DicomReadError as exc:
        raise ConversionError(f"{exc} (image series of patient {job.patient_id})") from exc
    series = ImageSeries(str(datasets[0].SeriesInstanceUID), job.patient_id, tuple(files), tuple(datasets))
    grid = series_grid(series)
    return series, slice_grid(grid, datasets, series.series_uid, files[0].parent)


def read_image(series: ImageSeries, grid: SliceGrid) -> Any:
    """The series' pixels as a SimpleITK image on ``grid``; integer CT narrowed to int16 when it fits.

    GDCM reads CT with RescaleIntercept -1024 as int32: twice the bytes nnU-Net reads every epoch.
    The geometry is set from the checked grid, not from SimpleITK's own slice-spacing estimate.
    """
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    # ITK picks a reader by the first file's preamble; exports without one are DICOM all the same
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames([str(f) for f in series.files])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise ConversionError(
            f"{grid.folder}: GDCM could not read the pixels of series {grid.series_uid} ({last[:300]}); "
            "a slice may be corrupt: open the series in a viewer, re-export it, or report it with its files"
        ) from exc
    if tuple(image.GetSize()) != grid.grid.size:
        raise ConversionError(
            f"{grid.folder}: SimpleITK read {image.GetSize()} voxels from series {grid.series_uid}, expected "
            f"{grid.grid.size}; report the series so the reader can be fixed."
        )
    image.SetSpacing(grid.grid.spacing)
    image.SetOrigin(grid.grid.origin)
    image.SetDirection(grid.grid.direction)
    if image.GetPixelID() in (sitk.sitkInt32, sitk.sitkUInt32, sitk.sitkUInt16, sitk.sitkInt64):
        lo, hi = sitk.MinimumMaximum(image)
        if INT16_MIN <= lo and hi <= INT16_MAX:
            image = sitk.Cast(image, sitk.sitkInt16)
    return image


def _draw(job: PairJob, grid: SliceGrid) -> tuple[np.ndarray, tuple[str, ...]]:
    if len(job.annotation_files) != 1:
        raise ConversionError(
            f"{job.annotation_files[0].parent}: the {job.annotation_kind} series of patient {job.patient_id} "
            f"has {len(job.annotation_files)} files; keep the one annotation file per series."
        )
    canvas = LabelCanvas(
        (grid.slices, grid.rows, grid.cols), label_values(job.roi_labels), MaskStrategy(job.strategy)
    )
    reader = read_seg if job.annotation_kind == "SEG" else read_rtstruct
    content = reader(job.annotation_files[0], grid, job.roi_labels, canvas)
    return canvas.array, content.empty_labels


_FULL = (errno.ENOSPC, errno.EDQUOT)


def _discard(writer: Any, job: PairJob) -> None:
    writer.shutdown(wait=True)
    for path in (job.image_out, job.label_out, *job.channel_outs):
        path.unlink(missing_ok=True)


def _write_channels(job: PairJob, reference: Any) -> tuple[dict[str, Any], ...]:
    """Channels 1.. read with the reference's checks, on its grid, written; what was done to each."""
    from iterseg.convert.channels import LOW_COVERAGE, onto_reference

    done = []
    for files, out in zip(job.channel_files, job.channel_outs, strict=True):
        series, grid = _image_series(job, files)
        image, record = onto_reference(read_image(series, grid), reference)
        write_nifti(image, out)
        if record["coverage"] < LOW_COVERAGE:
            logger.warning(
                "patient %s: series %s covers %.0f %% of the reference grid; the rest is its minimum",
                job.patient_id,
                series.series_uid,
                100 * record["coverage"],
            )
        done.append(record)
    return tuple(done)


def convert_pair(job: PairJob) -> PairResult:
    """Convert and check one pair; a bad pair comes back with its one-line ``error``, not raised."""
    from concurrent.futures import ThreadPoolExecutor

    import SimpleITK as sitk

    with ThreadPoolExecutor(1) as writer:  # the image compresses while the annotation is drawn
        try:
            series, grid = _image_series(job)
            image = read_image(series, grid)
            written = writer.submit(write_nifti, image, job.image_out)
            channels = _write_channels(job, image)
            identity = voxel_hash(image)
            array, empty = _draw(job, grid)
            label = sitk.GetImageFromArray(array)
            label.CopyInformation(image)
            del image, array
            write_nifti(label, job.label_out)
            del label
            checks = check_case(
                job.case_id,
                job.patient_id,
                job.label_out,
                series.files,
                job.annotation_kind,
                job.annotation_files[0],
                job.roi_labels,
                job.strategy,
                source=series.datasets,
            )
            written.result()
        except (ConversionError, DicomReadError) as exc:  # GeometryError too; the readers' own errors
            _discard(writer, job)
            return PairResult(job.case_id, error=str(exc))
        except (OSError, MemoryError) as exc:
            _discard(writer, job)
            if isinstance(exc, OSError) and exc.filename is not None and exc.errno not in _FULL:
                return PairResult(job.case_id, error=f"{exc.filename}: cannot be read ({exc.strerror})")
            raise  # a full disk or no memory is the machine's problem, not the case's
        except Exception as exc:  # a reader library choking on one case must not stop the others
            logger.debug("patient %s: unexpected failure", job.patient_id, exc_info=True)
            _discard(writer, job)
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
            return PairResult(
                job.case_id,
                error=f"{job.image_files[0].parent} with {job.annotation_files[0]}: conversion failed "
                f"({type(exc).__name__}: {first[:300]}); a file of the case may be corrupt: check it in a "
                "viewer, or report the case with its files so the converter can be fixed",
            )
    voxels = grid.rows * grid.cols * grid.slices
    return PairResult(job.case_id, checks, empty, voxels, channels, identity)
