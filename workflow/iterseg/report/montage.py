"""QC overlay montages (PNG) of segmentation predictions, so researchers can eyeball every case.

Metrics alone hide gross failures (a label on the wrong side, a leak into a neighbouring organ, a flipped
volume), and opening every prediction in a viewer does not scale over an iteration's cases. One small PNG
per case - the image in grey with each label outlined on an axial, coronal and sagittal slice through the
label's centre of mass - can be skimmed in seconds and shows where a prediction needs refining. When a
reference exists (test-set cases) the prediction and the reference are outlined in two colours instead.

Display orientation: every volume is first reoriented (permutation and flips only, no resampling) to the
DICOM ``LPS`` orientation, so the array axes ``(z, y, x)`` point to superior, posterior and the patient's
left whatever the direction cosines of the input. Then axial slices show anterior at the top and the
patient's right on the viewer's left (radiological convention); coronal and sagittal slices show superior
at the top, with the patient's right on the left (coronal) and anterior on the left (sagittal). Pixels are
drawn with their physical aspect ratio, taken from the voxel spacing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from iterseg.evaluate.metrics import UNSCORED_LABELS
from iterseg.paths import partial_path

if TYPE_CHECKING:
    import SimpleITK as sitk
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, SubFigure

logger = logging.getLogger(__name__)

#: CT display window (soft tissue): level and width in HU.
CT_WINDOW_LEVEL = 40.0
CT_WINDOW_WIDTH = 400.0

#: Percentiles of the image intensities that bound the display window of MR and other modalities.
PERCENTILE_WINDOW = (1.0, 99.0)

#: Outline colours (RGB 0-255) in reference mode.
_REFERENCE_RGB = (0, 200, 0)
_PREDICTION_RGB = (255, 0, 255)

_LINEWIDTH = 1.2
#: The reference outline is drawn wider, under the prediction's, so it stays visible where they coincide.
_REFERENCE_LINEWIDTH = 2.5
_DPI = 100
_FIG_WIDTH_IN = 9.0
_ROW_HEIGHT_IN = 3.0
#: Extra height for the figure title and the legend below the rows.
_CHROME_HEIGHT_IN = 0.8

#: tab10 (matplotlib's default colour cycle), RGB 0-255: the default colour of the n-th foreground label.
_TAB10 = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


@dataclass(frozen=True)
class _Row:
    """One montage row: which label it is about and the voxel index ``(z, y, x)`` its slices go through."""

    name: str
    value: int | None
    centre: tuple[int, int, int]
    subtitle: str


def window(array: np.ndarray, modality: str) -> tuple[float, float]:
    """Display window ``(vmin, vmax)`` of an image for its modality.

    Parameters
    ----------
    array
        Image intensities (any shape).
    modality
        ``"CT"`` (case-insensitive) gives the soft-tissue window, level 40 HU / width 400 HU, i.e.
        ``(-160, 240)``. Any other modality (MR, PET, ...) gives the 1st and 99th percentiles of the finite
        intensities, widened to a unit interval around the value when the image is constant.

    Returns
    -------
    tuple[float, float]
        ``(vmin, vmax)`` with ``vmin < vmax``, for ``imshow``.

    """
    if modality.strip().upper() == "CT":
        half = CT_WINDOW_WIDTH / 2
        return CT_WINDOW_LEVEL - half, CT_WINDOW_LEVEL + half
    values = np.asarray(array, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = (float(p) for p in np.percentile(values, PERCENTILE_WINDOW))
    if high <= low:
        return low - 0.5, low + 0.5
    return low, high


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    """Whether ``a`` and ``b`` share size, spacing, origin and direction (to a small tolerance)."""
    if a.GetSize() != b.GetSize():
        return False
    tolerance = 1e-3 * min(a.GetSpacing())
    return (
        np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=0, atol=tolerance)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=tolerance)
        and np.allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=1e-4)
    )


def _on_image_grid(label_map: sitk.Image, image: sitk.Image, what: str) -> sitk.Image:
    """``label_map`` itself when it lies on ``image``'s grid, else resampled onto it (nearest neighbour)."""
    import SimpleITK as sitk

    if label_map.GetDimension() != 3:
        raise ValueError(f"QC montage needs a 3-D {what}, got a {label_map.GetDimension()}-D image")
    if _same_grid(label_map, image):
        return label_map
    logger.warning(
        "%s is not on the image grid (size %s, spacing %s vs the image's %s, %s); resampling it onto the "
        "image grid with nearest neighbour for the QC montage",
        what,
        label_map.GetSize(),
        tuple(round(s, 4) for s in label_map.GetSpacing()),
        image.GetSize(),
        tuple(round(s, 4) for s in image.GetSpacing()),
    )
    return sitk.Resample(
        label_map, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, label_map.GetPixelID()
    )


def _foreground_labels(labels: Mapping[str, int]) -> list[tuple[str, int]]:
    """``(name, value)`` of the labels to draw, by value: no background/ignore, no value <= 0."""
    return sorted(
        (
            (name, int(value))
            for name, value in labels.items()
            if name not in UNSCORED_LABELS and int(value) > 0
        ),
        key=lambda item: (item[1], item[0]),
    )


def _rgb(colour: Sequence[int], name: str) -> tuple[float, float, float]:
    """An RGB 0-255 colour as matplotlib's 0-1 floats."""
    if len(colour) != 3 or any(not 0 <= int(c) <= 255 for c in colour):
        raise ValueError(f"colour of label {name!r} must be three integers 0-255 (RGB), got {colour!r}")
    r, g, b = (int(c) / 255 for c in colour)
    return r, g, b


def _label_colours(
    foreground: Sequence[tuple[str, int]], colours: Mapping[str, tuple[int, int, int]] | None
) -> dict[str, tuple[float, float, float]]:
    """Outline colour of every foreground label: the requested one, else tab10 by the label's rank."""
    chosen = colours or {}
    return {
        name: _rgb(chosen[name] if name in chosen else _TAB10[i % len(_TAB10)], name)
        for i, (name, _) in enumerate(foreground)
    }


def _centre_index(counts: np.ndarray) -> int:
    """Index along one axis of a mask's centre of mass, moved to the nearest index that holds the mask.

    ``counts`` is the number of mask voxels per index along that axis; a non-convex mask's centre of mass
    may fall between its parts, and a slice that misses the label would show nothing.
    """
    occupied = np.flatnonzero(counts)
    com = float(np.dot(np.arange(counts.size), counts) / counts.sum())
    return int(occupied[np.argmin(np.abs(occupied - com))])


def _centre(mask: np.ndarray) -> tuple[int, int, int]:
    """Voxel index ``(z, y, x)`` of the slices through ``mask``'s centre of mass."""
    z = _centre_index(mask.sum(axis=(1, 2)))
    y = _centre_index(mask.sum(axis=(0, 2)))
    x = _centre_index(mask.sum(axis=(0, 1)))
    return z, y, x


def _volume_ml(count: int, spacing: Sequence[float]) -> float:
    return count * float(np.prod(spacing)) / 1000.0


def _slices(volume: np.ndarray, centre: tuple[int, int, int]) -> list[np.ndarray]:
    """Axial, coronal and sagittal 2-D slices of a ``(z, y, x)`` volume through ``centre``."""
    z, y, x = centre
    return [volume[z], volume[:, y, :], volume[:, :, x]]


def _outline(ax: Axes, mask2d: np.ndarray, colour: tuple[float, float, float], linewidth: float) -> None:
    """Draw the boundary of a 2-D mask (pixel centres at integer coordinates, as ``imshow`` places them)."""
    if not mask2d.any():
        return
    # Pad with background so masks touching the slice border still get a closed outline; keep the view
    # limits of the image, which the padded grid would otherwise widen.
    xlim, ylim = ax.get_xlim(), ax.get_ylim()
    padded = np.pad(mask2d.astype(np.float32), 1)
    rows = np.arange(-1, mask2d.shape[0] + 1)
    cols = np.arange(-1, mask2d.shape[1] + 1)
    ax.contour(cols, rows, padded, levels=[0.5], colors=[colour], linewidths=linewidth)
    ax.set_xlim(xlim)
    ax.set_ylim(ylim)


def _rows(
    foreground: Sequence[tuple[str, int]],
    pred: np.ndarray,
    ref: np.ndarray | None,
    spacing: Sequence[float],
) -> tuple[list[_Row], list[tuple[str, int]]]:
    """One row per label present in the prediction or the reference, and the labels predicted.

    A row's slices go through the label's centre in the prediction, or in the reference if not predicted.
    """
    rows = []
    predicted = []
    for name, value in foreground:
        pred_mask = pred == value
        n_pred = int(np.count_nonzero(pred_mask))
        if n_pred:
            predicted.append((name, value))
            centre_mask = pred_mask
        n_ref = 0
        if ref is not None:
            ref_mask = ref == value
            n_ref = int(np.count_nonzero(ref_mask))
            if not n_pred:
                centre_mask = ref_mask
        if n_pred == 0 and n_ref == 0:
            continue
        subtitle = f"{name} (label {value}): prediction {_volume_ml(n_pred, spacing):.1f} mL"
        if ref is not None:
            subtitle += f", reference {_volume_ml(n_ref, spacing):.1f} mL"
            if n_pred == 0:
                subtitle += " (not predicted: slices through the reference)"
        rows.append(_Row(name, value, _centre(centre_mask), subtitle))
    return rows, predicted


@dataclass(frozen=True)
class _Volumes:
    """The image and label maps as ``(z, y, x)`` arrays in ``LPS`` orientation, and the voxel spacing."""

    image: np.ndarray
    prediction: np.ndarray
    reference: np.ndarray | None
    spacing: tuple[float, float, float]  # (x, y, z) in mm, as SimpleITK gives it


@dataclass(frozen=True)
class _Outlines:
    """What the prediction-only mode outlines in every panel: the labels predicted, in their colours."""

    present: Sequence[tuple[str, int]]
    colours: Mapping[str, tuple[float, float, float]]


#: Per view (axial, coronal, sagittal): name, the index letter of the slice, and the image origin.
_VIEWS = (("axial", "z", "upper"), ("coronal", "y", "lower"), ("sagittal", "x", "lower"))


def _oriented(image: sitk.Image, prediction: sitk.Image, reference: sitk.Image | None) -> _Volumes:
    """Check the inputs, put the label maps on the image grid and everything in ``LPS`` orientation."""
    import SimpleITK as sitk

    if image.GetDimension() != 3:
        raise ValueError(f"QC montage needs a 3-D image, got a {image.GetDimension()}-D image")
    if image.GetNumberOfComponentsPerPixel() != 1:
        components = image.GetNumberOfComponentsPerPixel()
        raise ValueError(f"QC montage needs a scalar image, got {components} components per voxel")
    prediction = _on_image_grid(prediction, image, "prediction")
    if reference is not None:
        reference = _on_image_grid(reference, image, "reference")

    def oriented(volume: sitk.Image) -> np.ndarray:
        return sitk.GetArrayFromImage(sitk.DICOMOrient(volume, "LPS"))

    oriented_image = sitk.DICOMOrient(image, "LPS")
    sx, sy, sz = oriented_image.GetSpacing()
    return _Volumes(
        sitk.GetArrayFromImage(oriented_image),
        oriented(prediction),
        None if reference is None else oriented(reference),
        (sx, sy, sz),
    )


def _figure(n_rows: int) -> Figure:
    """An empty figure on the Agg canvas, sized for ``n_rows`` rows of three slices."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height = _ROW_HEIGHT_IN * n_rows + _CHROME_HEIGHT_IN
    fig = Figure(figsize=(_FIG_WIDTH_IN, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _draw_row(
    subfig: SubFigure, row: _Row, volumes: _Volumes, vlimits: tuple[float, float], outlines: _Outlines
) -> None:
    """One row: the axial, coronal and sagittal slices through ``row.centre``, with their outlines."""
    sx, sy, sz = volumes.spacing
    # (row spacing / column spacing) of the axial, coronal and sagittal slices.
    aspects = (sy / sx, sz / sx, sz / sy)
    subfig.suptitle(row.subtitle, fontsize="medium")
    axes = subfig.subplots(1, 3)
    pred_slices = _slices(volumes.prediction, row.centre)
    ref_slices = None if volumes.reference is None else _slices(volumes.reference, row.centre)
    for k, (ax, image_slice) in enumerate(zip(axes, _slices(volumes.image, row.centre), strict=True)):
        view, letter, origin = _VIEWS[k]
        ax.imshow(
            image_slice,
            cmap="gray",
            vmin=vlimits[0],
            vmax=vlimits[1],
            aspect=aspects[k],
            origin=origin,
            interpolation="nearest",
        )
        ax.set_title(f"{view} ({letter}={row.centre[k]})", fontsize="small")
        ax.set_xticks([])
        ax.set_yticks([])
        if ref_slices is not None:
            # The reference wider and underneath, so where the two coincide the prediction shows
            # on top with a reference fringe rather than hiding it.
            if row.value is not None:
                reference_rgb = _rgb(_REFERENCE_RGB, "reference")
                _outline(ax, ref_slices[k] == row.value, reference_rgb, _REFERENCE_LINEWIDTH)
                prediction_rgb = _rgb(_PREDICTION_RGB, "prediction")
                _outline(ax, pred_slices[k] == row.value, prediction_rgb, _LINEWIDTH)
        else:
            for name, value in outlines.present:
                _outline(ax, pred_slices[k] == value, outlines.colours[name], _LINEWIDTH)


def _legend(fig: Figure, reference_mode: bool, outlines: _Outlines) -> None:
    """Below the rows: reference and prediction colours, or the predicted labels' colours."""
    from matplotlib.lines import Line2D

    if reference_mode:
        entries = [
            ("reference", _rgb(_REFERENCE_RGB, "reference")),
            ("prediction", _rgb(_PREDICTION_RGB, "prediction")),
        ]
    else:
        entries = [(name, outlines.colours[name]) for name, _ in outlines.present]
    if entries:
        handles = [Line2D([], [], color=colour, linewidth=2.5, label=name) for name, colour in entries]
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), frameon=False)


def _figure_title(title: str, predicted: bool) -> str:
    """``title``, followed by "no foreground predicted" when the prediction is empty."""
    return " - ".join(([title] if title else []) + ([] if predicted else ["no foreground predicted"]))


def _save_png(fig: Figure, out_png: Path) -> Path:
    """Write ``fig`` to ``out_png`` atomically (a temporary file beside it, then a rename)."""
    out_png.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(out_png)
    try:
        fig.savefig(partial, format="png", dpi=_DPI)
        os.replace(partial, out_png)
    finally:
        partial.unlink(missing_ok=True)
    return out_png


def qc_montage(
    image: sitk.Image,
    labels: Mapping[str, int],
    prediction: sitk.Image,
    out_png: Path,
    *,
    reference: sitk.Image | None = None,
    colours: Mapping[str, tuple[int, int, int]] | None = None,
    title: str = "",
    modality: str = "CT",
) -> Path:
    """Write a PNG montage of a prediction outlined on its image, one row per present label.

    Each row shows the axial, coronal and sagittal slices through the centre of mass of one label (in the
    prediction; in the reference when the prediction lacks it), moved to the nearest slice holding the
    label. The image is drawn in grey, each label as an outline (not filled) with its physical aspect ratio;
    see the module docstring for the orientation. Without a reference every present label is outlined in
    its colour in every panel and the legend names the labels; with a reference each row outlines only its
    label, the reference in green (wider, underneath) and the prediction in magenta on top, and the legend
    says which is which. If no label is present at all, a single row goes through the volume centre and
    the figure title says "no foreground predicted".

    Parameters
    ----------
    image
        The 3-D CT/MR volume.
    labels
        Label name -> value, e.g. ``{"liver": 1, "tumour": 2}``. Names ``background``/``ignore`` and
        values <= 0 are not drawn.
    prediction
        Integer label map. Expected on the image grid; otherwise it is resampled onto it (nearest
        neighbour) and a warning is logged.
    out_png
        Where to write the PNG; parent folders are created and the file is replaced atomically.
    reference
        Optional reference label map (test-set cases), handled like ``prediction``.
    colours
        RGB 0-255 per label name for the prediction-only mode; labels missing here get a tab10 colour
        (by their rank among the foreground labels, so a label keeps its colour across cases).
    title
        Figure title, e.g. the case id.
    modality
        ``"CT"``: soft-tissue window; anything else: 1st-99th percentile window (see `window`).

    Returns
    -------
    Path
        ``out_png``.

    Raises
    ------
    ValueError
        If the image, prediction or reference is not 3-D, the image is not scalar, or a colour is not RGB.

    """
    # Stays over 60 lines for its docstring, the montage's reference; the body is a list of phases.
    volumes = _oriented(image, prediction, reference)
    vlimits = window(volumes.image, modality)
    foreground = _foreground_labels(labels)
    rows, present = _rows(foreground, volumes.prediction, volumes.reference, volumes.spacing)
    outlines = _Outlines(present, _label_colours(foreground, colours))
    if not rows:
        shape = volumes.image.shape
        rows = [_Row("", None, (shape[0] // 2, shape[1] // 2, shape[2] // 2), "volume centre")]

    fig = _figure(len(rows))
    try:
        subfigs = fig.subfigures(len(rows), 1, squeeze=False)[:, 0]
        for subfig, row in zip(subfigs, rows, strict=True):
            _draw_row(subfig, row, volumes, vlimits, outlines)
        _legend(fig, volumes.reference is not None, outlines)
        if title or not present:
            fig.suptitle(_figure_title(title, bool(present)))
        out_png = _save_png(fig, Path(out_png))
    finally:
        fig.clear()
    logger.debug("wrote QC montage %s (%d rows)", out_png, len(rows))
    return out_png
