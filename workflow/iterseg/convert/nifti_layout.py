"""The layout of an nnU-Net / Decathlon NIfTI snapshot: ``dataset.json`` and which files form a case.

Apart from the conversion (:mod:`iterseg.convert.decathlon`) because it reads names, not voxels:
whatever dataset.json or the file names get wrong (a label the ROI YAML cannot place, a channel
too many, an image without its label) is found here, before any case is converted.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iterseg.convert.annotations import CaseProblem
from iterseg.convert.snapshot import sitk_size
from iterseg.errors import ConversionError
from iterseg.rawdata.fingerprint import OS_JUNK
from iterseg.roi import label_values, matching_labels

logger = logging.getLogger(__name__)

DATASET_JSON = "dataset.json"
UNLABELLED_FILE = "unlabelled.json"  # imagesTs/ cases without labelsTs/: not trained on
ENDINGS = (".nii.gz", ".nii")
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class Layout:
    """What dataset.json declares, mapped onto the ROI YAML."""

    path: Path  # the dataset.json
    channels: tuple[str, ...]
    values: dict[int, int]  # value in the snapshot's label files -> ROI YAML value (0 -> 0)
    declared: tuple[str, ...]  # ROI labels dataset.json declares, in ROI YAML order
    ending: str

    def key(self) -> str:
        """What the written files depend on besides the files' content and the ROI YAML."""
        return "nifti " + json.dumps({"channels": self.channels, "values": sorted(self.values.items())})


@dataclass(frozen=True)
class Case:
    """One case of the snapshot: its channel files in channel order and its label file."""

    name: str
    images: tuple[Path, ...]
    label: Path

    @property
    def series_uid(self) -> str:
        """Stands for the image series UID a NIfTI file lacks."""
        return _series_uid(self.name)


def _series_uid(name: str) -> str:
    """The image series "UID" of case ``name``: the same name gives the same case id in every snapshot."""
    return f"nifti:{name}"


# --- dataset.json -----------------------------------------------------------------------------


def read_layout(
    snapshot: Path,
    roi_labels: dict[str, list[str]],
    roi_yaml: Path,
    modality: str,
    channel_names: tuple[str, ...],
) -> Layout:
    """Read ``dataset.json`` and check it against the ROI YAML and the configured channels.

    Parameters
    ----------
    snapshot
        The snapshot folder holding ``dataset.json``.
    roi_labels, roi_yaml
        The ROI YAML (label -> regexes, in label order) and its path, for the messages.
    modality
        CT or MR: the channel of a single-channel dataset.
    channel_names
        The dataset's channels in nnU-Net's order, as configured; empty: one channel.

    Returns
    -------
    Layout
        The channels, the label values mapped onto the ROI YAML's and the file ending.

    Raises
    ------
    ConversionError
        If dataset.json is unreadable, or its labels, channels or file ending do not fit.

    """
    path = snapshot / DATASET_JSON
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConversionError(f"{path}: not a readable JSON file ({exc}); fix or rewrite it.") from exc
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: not a JSON object; write it as nnU-Net's dataset.json.")
    ending = data.get("file_ending", ".nii.gz")
    if ending not in ENDINGS:
        raise ConversionError(
            f"{path}: file_ending {ending!r}; iterseg reads NIfTI snapshots ({', '.join(ENDINGS)}): convert "
            "the images and labels to .nii.gz, or give the snapshot as DICOM."
        )
    channels = _channel_names(data, path)
    _check_channels(channels, channel_names, modality, path)
    values = _map_labels(_label_names(data, path), roi_labels, roi_yaml, path)
    targets = set(values.values())
    declared = tuple(name for name, value in label_values(roi_labels).items() if value and value in targets)
    return Layout(path, channels, values, declared, ending)


def _label_names(data: dict[str, Any], path: Path) -> dict[int, str]:
    """dataset.json's labels as value -> name, from either form."""
    labels = data.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ConversionError(
            f'{path}: no \'labels\' mapping; write it as {{"background": 0, "liver": 1}} (nnU-Net v2) '
            'or {"0": "background", "1": "liver"} (Decathlon).'
        )
    if all(isinstance(v, str) for v in labels.values()):  # the Decathlon's value -> name
        if not all(re.fullmatch(r"\d+", str(k)) for k in labels):
            raise ConversionError(
                f"{path}: labels {labels} map names to names; write value -> name "
                '({"0": "background", "1": "liver"}) or name -> value ({"background": 0, "liver": 1}).'
            )
        pairs = [(int(k), v) for k, v in labels.items()]
    else:
        pairs = [(v, str(k)) for k, v in labels.items()]
    names: dict[int, str] = {}
    for value, name in pairs:
        if isinstance(value, list):
            raise ConversionError(
                f"{path}: label {name!r} is a region {value}; region-based labels are not supported: "
                "give each structure its own value."
            )
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConversionError(f"{path}: label {name!r} has value {value!r}; use whole numbers 0, 1, ...")
        if value in names:
            raise ConversionError(
                f"{path}: labels {names[value]!r} and {name!r} share value {value}; keep one."
            )
        names[value] = name
    return names


def _channel_names(data: dict[str, Any], path: Path) -> tuple[str, ...]:
    """The channels in file-suffix order, from ``channel_names`` (v2) or ``modality`` (v1)."""
    raw = data.get("channel_names", data.get("modality"))
    if not isinstance(raw, dict) or not raw:
        raise ConversionError(
            f"{path}: no 'channel_names' (nnU-Net v2) or 'modality' (Decathlon) mapping; add one, "
            'e.g. "channel_names": {"0": "CT"}.'
        )
    if not all(re.fullmatch(r"\d+", str(k)) for k in raw):
        raise ConversionError(f'{path}: channels {raw} are not numbered; number them "0", "1", ...')
    order = sorted((int(k), str(v)) for k, v in raw.items())
    if [k for k, _ in order] != list(range(len(order))):
        raise ConversionError(
            f"{path}: channels {raw} are not numbered 0, 1, ... without gaps; renumber them."
        )
    return tuple(name for _, name in order)


def _check_channels(
    declared: tuple[str, ...], configured: tuple[str, ...], modality: str, path: Path
) -> None:
    """The channels dataset.json declares must be the dataset's, in its order."""
    if configured and declared != tuple(configured):
        raise ConversionError(
            f"{path}: channels {list(declared)} differ from the dataset's channels {list(configured)} "
            "(config datasets.<name>.channels); the order is nnU-Net's input order: make them equal, "
            "renaming them in dataset.json or reordering the config's."
        )
    if not configured and len(declared) != 1:
        raise ConversionError(
            f"{path}: {len(declared)} channels {list(declared)}, but the dataset is configured for one "
            f"({modality}); list them under datasets.<name>.channels in the config, in this order."
        )
    if not configured and (declared[0].upper() == "CT") != (modality.upper() == "CT"):
        logger.warning(
            "%s: channel %r, but the dataset's modality is %s: nnU-Net normalises by the config's %s",
            path,
            declared[0],
            modality,
            modality,
        )


def _map_labels(
    names: dict[int, str], roi_labels: dict[str, list[str]], roi_yaml: Path, path: Path
) -> dict[int, int]:
    """Label file value -> ROI YAML value, every non-background name matching exactly one label."""
    values = label_values(roi_labels)
    mapping = {0: 0}  # a label file's 0 is background whatever dataset.json calls it
    for value, name in sorted(names.items()):
        if value == 0:
            continue
        found = matching_labels(name, roi_labels)
        if len(found) != 1:
            what = f"matches {len(found)} labels ({', '.join(found)})" if found else "matches no label"
            raise ConversionError(
                f"{path}: label {name!r} (value {value}) {what} of {roi_yaml}; rename it in dataset.json "
                "to a label of the ROI YAML, or add its name to "
                + ("only one label's regexes" if found else "a label's regexes")
                + " in the ROI YAML."
            )
        mapping[value] = values[found[0]]
    return mapping


# --- the cases of the folders -------------------------------------------------------------------


def _files(folder: Path, ending: str) -> dict[str, Path]:
    """Name without ending -> file, for every NIfTI file of ``folder`` (none if it is absent)."""
    if not folder.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        # the Decathlon's archives carry macOS '._<case>.nii.gz' resource forks: not images
        if path.name.startswith(".") or path.name in OS_JUNK:
            continue
        if path.is_file() and path.name.endswith(ending):
            found[path.name[: -len(ending)]] = path
        else:
            logger.warning("%s: not a %s file; ignored", path, ending)
    return found


def find_cases(
    snapshot: Path, layout: Layout, problems: list[CaseProblem]
) -> tuple[list[Case], list[dict[str, Any]]]:
    """The labelled cases of imagesTr/ (and imagesTs/ with labelsTs/), and imagesTs/'s unlabelled ones.

    Parameters
    ----------
    snapshot
        The snapshot folder.
    layout
        What its dataset.json declares (:func:`read_layout`).
    problems
        Appended to: a file without its label, image or a channel, and a case in both
        imagesTr/ and imagesTs/.

    Returns
    -------
    tuple[list[Case], list[dict[str, Any]]]
        The cases to convert, and the imagesTs/ cases without labelsTs/ (``unlabelled.json``'s rows).

    Raises
    ------
    ConversionError
        If imagesTr/ holds no image, or its images are 4D.

    """
    images, labels = (
        _files(snapshot / "imagesTr", layout.ending),
        _files(snapshot / "labelsTr", layout.ending),
    )
    if not images:
        raise ConversionError(
            f"{snapshot / 'imagesTr'}: no {layout.ending} file; put the images there as "
            f"<case>_0000{layout.ending} (one file per channel), their label maps in "
            f"{snapshot / 'labelsTr'}/<case>{layout.ending}."
        )
    # nnU-Net v2 names every file <case>_0000; the Decathlon's one file per case <case>
    per_channel = all(_CHANNEL_FILE.match(s) for s in images) and not set(images) & set(labels)
    if not per_channel:
        _refuse_4d(next(iter(images.values())))
    cases = _pair_files(
        snapshot / "imagesTr", images, snapshot / "labelsTr", labels, layout, per_channel, problems
    )
    test_images = _files(snapshot / "imagesTs", layout.ending)
    test_groups = _group(test_images, per_channel)
    if not (snapshot / "labelsTs").is_dir():
        unlabelled = [
            {"case": name, "files": [str(p) for p in files.values()]} for name, files in test_groups.items()
        ]
        if unlabelled:
            logger.info(
                "%s: %d case(s) in imagesTs/ without labelsTs/: not trained on, not predicted; listed in %s",
                snapshot.name,
                len(unlabelled),
                UNLABELLED_FILE,
            )
        return cases, unlabelled
    test_labels = _files(snapshot / "labelsTs", layout.ending)
    tests = _pair_files(
        snapshot / "imagesTs", test_images, snapshot / "labelsTs", test_labels, layout, per_channel, problems
    )
    known = {c.name for c in cases}
    for case in (c for c in tests if c.name in known):
        problems.append(
            CaseProblem(
                case.name,
                str(case.images[0]),
                f"{case.images[0]}: case {case.name} is in imagesTr/ too; keep one of them (the config's "
                "test_set decides which patients are held out)",
            )  # no series UID: that would name the imagesTr/ case, which is converted
        )
    return cases + [c for c in tests if c.name not in known], []


def _refuse_4d(image: Path) -> None:
    """Stop at a Decathlon 4D image (channels in one file): iterseg reads one 3D file per channel."""
    try:
        dimension = len(sitk_size(image))
    except RuntimeError:  # unreadable: its case says so when converted
        return
    if dimension == 4:
        raise ConversionError(
            f"{image}: a 4D image (several channels in one file); iterseg reads one 3D file per channel: "
            "split every image into imagesTr/<case>_0000.nii.gz, _0001, ... (nnU-Net v2's layout; "
            "nnUNetv2_convert_MSD_dataset -i <TaskXX_Name> writes it) with dataset.json's channel_names."
        )


def _group(images: dict[str, Path], per_channel: bool) -> dict[str, dict[int, Path]]:
    """Case name -> channel index -> file."""
    grouped: dict[str, dict[int, Path]] = {}
    for stem, path in images.items():
        match = _CHANNEL_FILE.match(stem) if per_channel else None
        name, index = (match["case"], int(match["channel"])) if match else (stem, 0)
        grouped.setdefault(name, {})[index] = path
    return {name: dict(sorted(files.items())) for name, files in sorted(grouped.items())}


def _pair_files(
    image_dir: Path,
    images: dict[str, Path],
    label_dir: Path,
    labels: dict[str, Path],
    layout: Layout,
    per_channel: bool,
    problems: list[CaseProblem],
) -> list[Case]:
    """Every image with its label and all its channels; a file without its partners is a problem."""
    cases = []
    grouped = _group(images, per_channel)
    for name, files in grouped.items():
        fault = _missing_partner(name, files, image_dir, label_dir, labels, layout)
        if fault is not None:
            problems.append(CaseProblem(name, str(fault[0]), fault[1], (_series_uid(name),)))
            continue
        cases.append(Case(name, tuple(files.values()), labels[name]))
    for name in sorted(set(labels) - set(grouped)):
        image = image_dir / f"{name}{'_0000' if per_channel else ''}{layout.ending}"
        problems.append(
            CaseProblem(
                name,
                str(labels[name]),
                f"{labels[name]}: a label without its image {image}; add the image, or remove the label",
                (_series_uid(name),),
            )
        )
    return cases


def _missing_partner(
    name: str,
    files: dict[int, Path],
    image_dir: Path,
    label_dir: Path,
    labels: dict[str, Path],
    layout: Layout,
) -> tuple[Path, str] | None:
    """The file at fault and the message when a case lacks its label or a channel, or None."""
    if name not in labels:
        image = next(iter(files.values()))
        return image, (
            f"{image}: no label file {label_dir / (name + layout.ending)}; add the label map, or move the "
            f"image out of {image_dir}"
        )
    declared = f"dataset.json declares {len(layout.channels)} channel(s) {list(layout.channels)}"
    for k in range(len(layout.channels)):
        if k not in files:
            expected = image_dir / f"{name}_{k:04d}{layout.ending}"
            return expected, f"{expected}: missing, channel {k} of case {name} ({declared}); add the file"
    for k, path in files.items():
        if k >= len(layout.channels):
            return (
                path,
                f"{path}: channel {k} of case {name}, beyond those {declared}; remove it or declare it",
            )
    return None
