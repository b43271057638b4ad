"""ROI YAML: nnU-Net label name -> regexes over ROI/segment names, as med-imagetools reads it."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import yaml
from pydicom.sr.coding import Code

from iterseg.dicom.codes import Terminology, terminology
from iterseg.errors import ConfigError

logger = logging.getLogger(__name__)

LABEL_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def load_roi_yaml(path: Path) -> dict[str, list[str]]:
    """Read and check an ROI YAML; return labels in file order with their patterns.

    The order defines the nnU-Net label values (1, 2, ...) and which label wins where ROIs
    overlap under the sparse_mask strategy (the later one).

    Raises
    ------
    ConfigError
        If the file is missing, is not a mapping of names to regex lists, or a regex does not
        compile; the message names the file and the label.

    """
    if not path.is_file():
        raise ConfigError(
            f"{path}: ROI YAML not found. Write it as 'label: [regex, ...]' per line "
            "(see config/roi_demo.yaml) or set datasets.<name>.roi_yaml in the config."
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}).") from exc
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{path}: expected a mapping 'label: [regex, ...]' with at least one label.")
    labels: dict[str, list[str]] = {}
    for name, patterns in data.items():
        if not isinstance(name, str) or not LABEL_NAME.match(name) or name.lower() == "background":
            raise ConfigError(
                f"{path}: label {name!r} is not usable; use letters, digits, '_' or '-', "
                "starting with a letter, and not 'background'."
            )
        if isinstance(patterns, dict):
            unknown = set(patterns) - {"patterns", "code", "category", "colour"}
            if unknown:
                raise ConfigError(
                    f"{path}: label {name!r}: unknown key(s) {sorted(unknown)}; use patterns, code, "
                    "category, colour."
                )
            patterns = patterns.get("patterns")
        if isinstance(patterns, str):
            patterns = [patterns]
        if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) for p in patterns):
            raise ConfigError(f"{path}: label {name!r} needs a regex or a non-empty list of regexes.")
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(
                    f"{path}: label {name!r}: regex {pattern!r} does not compile ({exc})."
                ) from exc
        labels[name] = list(patterns)
    return labels


def match_roi_name(name: str, labels: dict[str, list[str]]) -> str | None:
    """The first label whose regexes match ROI/segment ``name`` in full, ignoring case, or None.

    The same rule med-imagetools applies with ``roi_ignore_case``.
    """
    for label, patterns in labels.items():
        if any(re.fullmatch(p, name, flags=re.IGNORECASE) for p in patterns):
            return label
    return None


def matching_labels(name: str, labels: dict[str, list[str]]) -> list[str]:
    """Every label whose regexes match ``name`` in full (ignoring case), in ROI YAML order.

    More than one means the ROI YAML is ambiguous for this name: drawing it into the first (as
    med-imagetools would) silently trains the other label without it.
    """
    return [
        label
        for label, patterns in labels.items()
        if any(re.fullmatch(p, name, flags=re.IGNORECASE) for p in patterns)
    ]


def label_values(labels: dict[str, list[str]]) -> dict[str, int]:
    """nnU-Net's ``labels`` mapping for dataset.json: background 0, then file order."""
    return {"background": 0, **{name: i for i, name in enumerate(labels, start=1)}}


def _code(path: Path, name: str, key: str, data: Any) -> Code:
    if not isinstance(data, dict) or not {"value", "scheme", "meaning"} <= set(data):
        raise ConfigError(
            f"{path}: label {name!r}: {key} needs value, scheme and meaning, e.g. "
            "{value: '10200004', scheme: SCT, meaning: Liver}."
        )
    return Code(str(data["value"]), str(data["scheme"]), str(data["meaning"]))


def load_roi_terms(path: Path, warn: bool = True) -> dict[str, Terminology]:
    """Coded description and colour of every label: the ROI YAML's own, else the built-in table.

    Labels the table does not know get a generic code; each is reported once (warning) with the
    fix: ``code:`` (and ``category:``/``colour:``) under the label in the ROI YAML.
    """
    labels = load_roi_yaml(path)
    data = yaml.safe_load(path.read_text())
    terms: dict[str, Terminology] = {}
    for name in labels:
        entry = data[name] if isinstance(data[name], dict) else {}
        term = terminology(name)
        if "code" in entry:
            category = (
                _code(path, name, "category", entry["category"]) if "category" in entry else term.category
            )
            term = Terminology(category, _code(path, name, "code", entry["code"]), term.colour)
        if "colour" in entry:
            colour = entry["colour"]
            if not (
                isinstance(colour, list)
                and len(colour) == 3
                and all(isinstance(c, int) and 0 <= c <= 255 for c in colour)
            ):
                raise ConfigError(f"{path}: label {name!r}: colour must be [r, g, b] with values 0-255.")
            term = Terminology(term.category, term.type, (colour[0], colour[1], colour[2]), term.known)
        if not term.known and warn:
            logger.warning(
                "%s: label %r has no built-in SNOMED CT code; the SEG uses the generic %s. Add "
                "code: {value, scheme, meaning} under it in the ROI YAML to code it.",
                path,
                name,
                term.type.meaning,
            )
        terms[name] = term
    return terms
