"""Plots that show whether the iterative annotate -> train loop is working.

Each iteration adds annotated cases and fine-tunes a new model; the loop is worth its cost only
if the test-set scores climb with the number of cases, and if researchers have to edit the
model's predictions less and less before they become annotations. Tables of numbers hide such
trends, so these figures put them side by side:

* :func:`learning_curves`: test Dice and NSD per label, against the iteration and against the
  number of training cases, with the iterations that failed the promotion gate marked;
* :func:`effort_curves`: how much the researchers changed each iteration's predictions;
* :func:`training_curves`: nnU-Net's own log of one fold (losses, pseudo-Dice, learning rate),
  to tell a bad iteration from a training run that went wrong.

All figures use matplotlib's object API on the Agg canvas (no pyplot global state, safe in
workers and without a display), and are written atomically as PNG.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iterseg.paths import partial_path

if TYPE_CHECKING:  # matplotlib and torch are imported where used: the CLI imports this module and starts fast
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

logger = logging.getLogger(__name__)

#: Resolution of every PNG written here.
DPI = 100

#: The per-epoch lists of nnU-Net's ``LocalLogger`` that :func:`read_training_log` returns.
TRAINING_LOG_KEYS: tuple[str, ...] = (
    "train_losses",
    "val_losses",
    "mean_fg_dice",
    "ema_fg_dice",
    "lrs",
    "epoch_start_timestamps",
    "epoch_end_timestamps",
)

_Y_LIMITS = (-0.03, 1.03)
_MARKER_SIZE = 7
_LEARNING_TITLE = "Learning curves (test set)"
_EFFORT_TITLE = "Annotation effort"
_EFFORT_X_LABEL = "iteration (snapshot that brought the refined predictions)"


@dataclass(frozen=True)
class IterationPoint:
    """One iteration of a dataset, as the learning curves need it."""

    iteration: str  # date "YYYY-MM-DD"
    training_cases: int  # annotated cases trained on
    dice: Mapping[str, float | None]  # test-set mean Dice per label name (None/nan = not scorable)
    nsd: Mapping[str, float | None]  # test-set mean NSD per label
    promoted: bool | None  # passed the promotion gate (None = unknown)


@dataclass(frozen=True)
class EffortPoint:
    """The annotation effort of one iteration: how much its refined predictions were changed."""

    iteration: str  # date
    cases: int  # refined predictions compared
    unedited: int  # refined SEGs identical to the prediction
    large_edits: int
    slices_edited_fraction: float | None
    dice: Mapping[str, float | None]  # mean Dice per label between prediction and its refinement


# --------------------------------------------------------------------------------------------- helpers


def _value(value: Any) -> float:
    """``value`` as a float; None, unparsable and non-finite values become nan."""
    if value is None:
        return math.nan
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def _label_names(mappings: Iterable[Mapping[str, Any]]) -> list[str]:
    """Label names in order of first appearance across ``mappings``."""
    names: dict[str, None] = {}
    for mapping in mappings:
        for name in mapping:
            names.setdefault(str(name), None)
    return list(names)


def _colors(n: int) -> list[str]:
    """``n`` distinguishable colours (tab10, then tab20 for many labels)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    size = 10 if n <= 10 else 20
    return [f"C{i}" if n <= 10 else _hex(cmap(i % size)) for i in range(n)]


def _hex(rgba: tuple[float, float, float, float]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(round(c * 255) for c in rgba[:3]))


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, out_png: Path) -> Path:
    """Write ``figure`` to ``out_png`` atomically (temporary file in the same folder, then rename)."""
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(out_png)
    try:
        with partial.open("xb") as handle:
            figure.savefig(handle, format="png", dpi=DPI)
        os.replace(partial, out_png)
    finally:
        partial.unlink(missing_ok=True)
    logger.debug("wrote %s", out_png)
    return out_png


def _message_figure(message: str, out_png: Path, title: str) -> Path:
    """A small figure that only says ``message`` (nothing to plot yet)."""
    figure = _new_figure(6, 3)
    if title:
        figure.suptitle(title)
    figure.text(0.5, 0.5, message, ha="center", va="center", fontsize=14, color="0.35")
    return _save(figure, out_png)


def _handle(label: str, **style: Any) -> Line2D:
    """A legend entry that is not drawn in any axes."""
    from matplotlib.lines import Line2D

    return Line2D([], [], label=label, **style)


def _categorical_x(ax: Axes, ticks: Sequence[str]) -> None:
    """Dates as categorical ticks, in order, rotated when they would collide."""
    ax.set_xticks(range(len(ticks)), list(ticks))
    if len(ticks) > 4:
        ax.tick_params(axis="x", labelrotation=30)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    ax.set_xlim(-0.5, len(ticks) - 0.5)


def _cases_x(ax: Axes, cases: Sequence[float]) -> None:
    """Integer ticks for the number of training cases, padded so a single value sits mid-panel."""
    from matplotlib.ticker import MaxNLocator

    low, high = min(cases), max(cases)
    pad = max(1.0, 0.05 * (high - low))
    ax.set_xlim(low - pad, high + pad)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("annotated training cases")


def _unit_y(ax: Axes, ylabel: str) -> None:
    ax.set_ylim(*_Y_LIMITS)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)


def _no_data(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", color="0.4")


# ------------------------------------------------------------------------------------- learning curves


_PROMOTION_STYLE: dict[bool | None, tuple[str, str]] = {
    True: ("o", "promoted"),
    False: ("o", "not promoted"),
    None: ("s", "promotion unknown"),
}


def _plot_label(
    ax: Axes, xs: Sequence[float], ys: Sequence[float], promoted: Sequence[bool | None], color: str
) -> bool:
    """One label's line through its scorable points, markers styled by promotion; False if none scorable."""
    finite = [(x, y, p) for x, y, p in zip(xs, ys, promoted, strict=True) if not math.isnan(y)]
    if not finite:
        return False
    ax.plot([x for x, _, _ in finite], [y for _, y, _ in finite], color=color, lw=1.8, zorder=2)
    for state, (marker, _) in _PROMOTION_STYLE.items():
        chosen = [(x, y) for x, y, p in finite if p is state]
        if chosen:
            ax.plot(
                [x for x, _ in chosen],
                [y for _, y in chosen],
                ls="none",
                marker=marker,
                ms=_MARKER_SIZE,
                mec=color,
                mew=1.8,
                mfc="white" if state is False else color,
                zorder=3,
            )
    return True


def learning_curves(points: Sequence[IterationPoint], out_png: Path, *, title: str = "") -> Path:
    """Test-set Dice and NSD per label, against the iteration and against the number of training cases.

    Parameters
    ----------
    points
        One entry per iteration, in any order (drawn in date order).
    out_png
        The PNG to write; its folder is created.
    title
        Figure title, e.g. the dataset name.

    Returns
    -------
    Path
        ``out_png``.

    Notes
    -----
    Four panels: Dice per label vs iteration, NSD per label vs iteration, Dice per label vs number of
    training cases, NSD per label vs number of training cases. Each label is one line with markers
    through its scorable values (None/nan are skipped); iterations that failed the promotion gate
    have hollow markers, those of unknown promotion square ones. With no points the figure only says
    'no iterations yet'.

    """
    if not points:
        return _message_figure("no iterations yet", out_png, title or _LEARNING_TITLE)
    ordered = sorted(points, key=lambda p: p.iteration)
    labels = _label_names([p.dice for p in ordered] + [p.nsd for p in ordered])
    colors = dict(zip(labels, _colors(len(labels)), strict=True))
    promoted = [p.promoted for p in ordered]
    by_iteration = [float(i) for i in range(len(ordered))]
    by_cases = [float(p.training_cases) for p in ordered]

    figure = _new_figure(12, 9)
    axes = figure.subplots(2, 2)
    panels: list[tuple[Axes, str, Sequence[float], str]] = [
        (axes[0, 0], "dice", by_iteration, "Dice vs iteration"),
        (axes[0, 1], "nsd", by_iteration, "NSD vs iteration"),
        (axes[1, 0], "dice", by_cases, "Dice vs training cases"),
        (axes[1, 1], "nsd", by_cases, "NSD vs training cases"),
    ]
    scorable: set[str] = set()
    for ax, metric, xs, panel_title in panels:
        scorable |= _learning_panel(ax, panel_title, ordered, metric, xs, colors)
        if xs is by_iteration:
            _categorical_x(ax, [p.iteration for p in ordered])
            ax.set_xlabel("iteration")
        else:
            _cases_x(ax, xs)
    handles = _learning_legend(labels, colors, set(labels) - scorable, promoted)
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), frameon=False)
    figure.suptitle(title or _LEARNING_TITLE, fontsize=14)
    return _save(figure, out_png)


def _learning_panel(
    ax: Axes,
    title: str,
    ordered: Sequence[IterationPoint],
    metric: str,
    xs: Sequence[float],
    colors: Mapping[str, str],
) -> set[str]:
    """One panel: a line per label (``colors``, in order) of ``metric`` against ``xs``; the labels drawn.

    ``metric`` is ``dice`` or ``nsd``; the caller sets the x axis.
    """
    promoted = [p.promoted for p in ordered]
    drawn: set[str] = set()
    for label in colors:
        ys = [_value(getattr(p, metric).get(label)) for p in ordered]
        if _plot_label(ax, xs, ys, promoted, colors[label]):
            drawn.add(label)
    if not drawn:
        _no_data(ax, "no scorable values")
    ax.set_title(title)
    _unit_y(ax, f"test-set mean {'Dice' if metric == 'dice' else 'NSD'}")
    return drawn


def _learning_legend(
    labels: Sequence[str], colors: Mapping[str, str], unscorable: set[str], promoted: Sequence[bool | None]
) -> list[Line2D]:
    """Legend entries: each label (marked when never scorable), then the promotion markers that occur."""
    handles = [_handle(label, color=colors[label], lw=1.8, marker="o", ms=_MARKER_SIZE) for label in labels]
    for label in sorted(unscorable):
        handles[labels.index(label)].set_label(f"{label} (not scorable)")
    for state, (marker, text) in _PROMOTION_STYLE.items():
        if state in promoted:
            handles.append(
                _handle(
                    text,
                    ls="none",
                    marker=marker,
                    ms=_MARKER_SIZE,
                    mec="0.2",
                    mew=1.8,
                    mfc="white" if state is False else "0.2",
                )
            )
    return handles


# --------------------------------------------------------------------------------------- effort curves


def effort_curves(points: Sequence[EffortPoint], out_png: Path, *, title: str = "") -> Path:
    """Annotation effort per iteration: how much researchers changed the predictions they refined.

    Parameters
    ----------
    points
        One entry per iteration, in any order (drawn in date order).
    out_png
        The PNG to write; its folder is created.
    title
        Figure title, e.g. the dataset name.

    Returns
    -------
    Path
        ``out_png``.

    Notes
    -----
    Left: mean Dice(prediction, refined) per label (higher = less editing). Right: fraction of slices
    edited, one bar per iteration, annotated with the number of cases compared, of unedited cases and
    of large edits. Iterations without refined predictions say so instead of a bar. With no points the
    figure only says 'no refined predictions yet'.

    """
    if not points:
        return _message_figure("no refined predictions yet", out_png, title or _EFFORT_TITLE)
    ordered = sorted(points, key=lambda p: p.iteration)
    ticks = [p.iteration for p in ordered]
    labels = _label_names(p.dice for p in ordered)
    colors = dict(zip(labels, _colors(len(labels)), strict=True))
    xs = [float(i) for i in range(len(ordered))]

    figure = _new_figure(13, 5.5)
    left, right = figure.subplots(1, 2)
    _agreement_panel(left, ordered, xs, colors)
    _categorical_x(left, ticks)
    left.set_xlabel(_EFFORT_X_LABEL)
    left.text(
        0.01, 0.01, "higher = less editing", transform=left.transAxes, fontsize=8, color="0.4", va="bottom"
    )
    _slices_edited_panel(right, ordered, xs, ticks)
    if labels:
        handles = [_handle(lb, color=colors[lb], lw=1.8, marker="o", ms=_MARKER_SIZE) for lb in labels]
        figure.legend(
            handles=handles,
            loc="outside lower center",
            ncols=min(len(labels), 8),
            frameon=False,
        )
    figure.suptitle(title or _EFFORT_TITLE, fontsize=14)
    return _save(figure, out_png)


def _agreement_panel(
    ax: Axes, ordered: Sequence[EffortPoint], xs: Sequence[float], colors: Mapping[str, str]
) -> None:
    """Mean Dice(prediction, refined) per label (``colors``, in order); the caller sets the x axis."""
    drawn = False
    for label in colors:
        ys = [_value(p.dice.get(label)) if p.cases > 0 else math.nan for p in ordered]
        drawn = _plot_label(ax, xs, ys, [True] * len(ordered), colors[label]) or drawn
    if not drawn:
        _no_data(ax, "no Dice values")
    ax.set_title("Agreement of prediction and refinement")
    _unit_y(ax, "mean Dice(prediction, refined)")


def _slices_edited_panel(
    right: Axes, ordered: Sequence[EffortPoint], xs: Sequence[float], ticks: Sequence[str]
) -> None:
    """A bar per iteration: fraction of slices edited, annotated with the cases compared and edited."""
    right.set_title("Slices edited")
    right.set_ylim(0, 1.4)
    right.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    right.set_ylabel("fraction of slices edited")
    right.grid(True, axis="y", alpha=0.3)
    _categorical_x(right, ticks)
    right.set_xlabel(_EFFORT_X_LABEL)
    for x, point in zip(xs, ordered, strict=True):
        if point.cases <= 0:
            right.text(x, 0.02, "no refined\npredictions", ha="center", va="bottom", fontsize=8, color="0.4")
            continue
        fraction = _value(point.slices_edited_fraction)
        top = 0.0
        if math.isnan(fraction):
            right.text(x, 0.02, "slices edited\nunknown", ha="center", va="bottom", fontsize=8, color="0.4")
            top = 0.12
        else:
            right.bar(x, fraction, width=0.6, color="C0", alpha=0.75)
            top = fraction
        right.text(
            x,
            top + 0.02,
            f"{point.cases} cases\n{point.unedited} unedited\n{point.large_edits} large edits",
            ha="center",
            va="bottom",
            fontsize=8,
        )


# ------------------------------------------------------------------------------------- training curves


def _load_logging(checkpoint: Path) -> Mapping[str, Any]:
    """The ``logging`` dict of an nnU-Net checkpoint; ValueError naming the file when it has none."""
    import torch

    data = torch.load(checkpoint, map_location="cpu", weights_only=False)
    log = data.get("logging") if isinstance(data, Mapping) else None
    if not isinstance(log, Mapping):
        raise ValueError(
            f"{checkpoint} has no 'logging' entry: not a checkpoint written by nnU-Net v2's trainer, "
            "so there is no training log to plot."
        )
    return log


def read_training_log(checkpoint: Path) -> dict[str, list[float]]:
    """nnU-Net's per-epoch training log of one fold, from its checkpoint.

    Parameters
    ----------
    checkpoint
        ``checkpoint_final.pth`` / ``checkpoint_latest.pth`` / ``checkpoint_best.pth`` of a fold.

    Returns
    -------
    dict[str, list[float]]
        Every key of :data:`TRAINING_LOG_KEYS` (``train_losses``, ``val_losses``, ``mean_fg_dice``,
        ``ema_fg_dice``, ``lrs``, ``epoch_start_timestamps``, ``epoch_end_timestamps``), one float per
        logged epoch (nan for missing values); a key the checkpoint lacks gives an empty list.

    Raises
    ------
    ValueError
        The checkpoint has no ``logging`` dict.

    """
    log = _load_logging(Path(checkpoint))
    result: dict[str, list[float]] = {}
    for key in TRAINING_LOG_KEYS:
        values = log.get(key)
        result[key] = [_value(v) for v in values] if isinstance(values, list | tuple) else []
    return result


def _default_training_title(checkpoint: Path) -> str:
    """``Dataset…/trainer__plans__config/fold_N`` from the usual nnU-Net results layout."""
    parts = checkpoint.resolve().parts
    return "/".join(parts[-4:-1]) if len(parts) >= 4 else checkpoint.name


def training_curves(checkpoint: Path, out_png: Path, *, title: str = "") -> Path:
    """nnU-Net's training log of one fold: losses, pseudo-Dice and learning rate per epoch.

    Parameters
    ----------
    checkpoint
        An nnU-Net v2 checkpoint of the fold (its ``logging`` entry is plotted).
    out_png
        The PNG to write; its folder is created.
    title
        Figure title; by default the dataset/trainer/fold folders of ``checkpoint``.

    Returns
    -------
    Path
        ``out_png``.

    Raises
    ------
    ValueError
        The checkpoint has no ``logging`` dict.

    Notes
    -----
    Top: training and validation loss (left axis) and pseudo-Dice, raw and moving average (right
    axis, 0-1) vs epoch. Bottom: learning rate, with the epoch duration on a second axis (an uneven
    duration means the GPU was shared with other jobs).

    """
    checkpoint = Path(checkpoint)
    log = read_training_log(checkpoint)
    epochs = max((len(v) for v in log.values()), default=0)

    figure = _new_figure(11, 8)
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[2, 1])
    figure.suptitle(title or _default_training_title(checkpoint), fontsize=12)
    if epochs == 0:
        _no_data(top, "no epochs logged")
        return _save(figure, out_png)
    handles = _loss_and_dice_panel(top, log) + _learning_rate_panel(bottom, log)
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
    if epochs == 1:
        bottom.set_xlim(-0.5, 0.5)
    return _save(figure, out_png)


def _series(log: Mapping[str, Sequence[float]], key: str, ax: Axes, **style: Any) -> list[Line2D]:
    """One per-epoch list of the log as a line (with dots while there are few epochs); none if empty."""
    values = log[key]
    if not values:
        return []
    return ax.plot(range(len(values)), values, marker="." if len(values) < 30 else None, **style)


def _loss_and_dice_panel(top: Axes, log: Mapping[str, Sequence[float]]) -> list[Line2D]:
    """Training and validation loss (left axis) and pseudo-Dice, raw and averaged (right axis, 0-1)."""
    dice_ax = top.twinx()
    lines = [
        *_series(log, "train_losses", top, color="tab:blue", lw=1.8, label="training loss"),
        *_series(log, "val_losses", top, color="tab:red", lw=1.8, label="validation loss"),
        *_series(log, "mean_fg_dice", dice_ax, color="tab:green", lw=1.4, ls=":", label="pseudo-Dice"),
        *_series(log, "ema_fg_dice", dice_ax, color="tab:green", lw=2.2, label="pseudo-Dice (moving avg.)"),
    ]
    top.set_ylabel("loss")
    top.grid(True, alpha=0.3)
    dice_ax.set_ylim(*_Y_LIMITS)
    dice_ax.set_ylabel("pseudo-Dice (validation, foreground mean)", color="tab:green")
    dice_ax.tick_params(axis="y", colors="tab:green")
    return lines


def _learning_rate_panel(bottom: Axes, log: Mapping[str, Sequence[float]]) -> list[Line2D]:
    """The learning rate per epoch, and each epoch's duration on a second axis (when logged)."""
    from matplotlib.ticker import MaxNLocator

    lines = _series(log, "lrs", bottom, color="black", lw=1.6, label="learning rate")
    bottom.set_ylabel("learning rate")
    finite_lrs = [lr for lr in log["lrs"] if not math.isnan(lr)]
    bottom.set_ylim(0, max(finite_lrs, default=1.0) * 1.08 or 1.0)
    bottom.grid(True, alpha=0.3)
    bottom.set_xlabel("epoch")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    starts, ends = log["epoch_start_timestamps"], log["epoch_end_timestamps"]
    durations = [end - start for start, end in zip(starts, ends, strict=False)]
    if durations:
        time_ax = bottom.twinx()
        lines += time_ax.plot(
            range(len(durations)),
            durations,
            color="tab:gray",
            lw=1.0,
            alpha=0.8,
            marker="." if len(durations) < 30 else None,
            label="epoch duration",
        )
        finite = [d for d in durations if not math.isnan(d)]
        time_ax.set_ylim(0, max(finite, default=1.0) * 1.15 or 1.0)
        time_ax.set_ylabel("epoch duration [s]", color="tab:gray")
        time_ax.tick_params(axis="y", colors="tab:gray")
    return lines
