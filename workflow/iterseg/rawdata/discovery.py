"""Discovery of dated snapshots under rawdata and the nnU-Net dataset each iteration gets."""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from iterseg.errors import SnapshotError

logger = logging.getLogger(__name__)

SNAPSHOT_NAME = re.compile(r"^(?P<date>\d{4}-\d{2}-\d{2})__(?P<dataset>.+)$")


@dataclass(frozen=True)
class Snapshot:
    """One dated snapshot folder = one iteration of the loop."""

    dataset: str
    date: str
    path: Path
    index: int  # 0-based position in date order

    @property
    def folder_name(self) -> str:
        """``<date>__<dataset>``, also the name of the iteration's procdata folder."""
        return f"{self.date}__{self.dataset}"


def nnunet_dataset_name(dataset: str, dataset_id: int, index: int, date: str) -> str:
    """Name of the nnU-Net dataset of iteration ``index`` (stable across re-runs).

    Parameters
    ----------
    dataset
        Dataset name from the config (folder under rawdata).
    dataset_id
        The configured id of the first iteration; iteration ``index`` gets ``dataset_id + index``.
    index
        0-based iteration index in date order.
    date
        The snapshot date, ``YYYY-MM-DD``.

    """
    nn_id = dataset_id + index
    if not 1 <= nn_id <= 999:
        raise SnapshotError(
            f"dataset {dataset}: iteration {index + 1} would need nnU-Net id {nn_id}, outside 1-999. "
            f"Lower datasets.{dataset}.dataset_id in the config."
        )
    return f"Dataset{nn_id:03d}_{dataset}_{date.replace('-', '')}"


def discover_snapshots(rawdata: Path, dataset: str, inbox: str = "inbox") -> list[Snapshot]:
    """List the snapshots of ``dataset`` in date order.

    Folders named ``inbox`` and hidden folders are skipped; any other folder must be named
    ``YYYY-MM-DD__<dataset>`` with a real date.

    Raises
    ------
    SnapshotError
        On a misnamed folder, a folder of another dataset, an impossible date or two folders
        with the same date.

    """
    root = rawdata / dataset
    if not root.is_dir():
        raise SnapshotError(
            f"{root}: no such folder. Put snapshots in {root}/<YYYY-MM-DD>__{dataset}/ "
            f"or remove dataset {dataset!r} from the config."
        )
    found: dict[str, Path] = {}
    for child in sorted(root.iterdir()):
        if child.name.startswith(".") or child.name == inbox or not child.is_dir():
            continue
        if child.name != child.name.strip():
            raise SnapshotError(
                f"{child}: the folder name {child.name!r} starts or ends with a space; rename it to "
                f"{child.name.strip()!r}."
            )
        match = SNAPSHOT_NAME.match(child.name)
        if not match:
            raise SnapshotError(
                f"{child}: not a snapshot name. Rename it to <YYYY-MM-DD>__{dataset} "
                f"(e.g. 2026-01-31__{dataset}), or move unannotated cases into {root / inbox}."
            )
        if match["dataset"] != dataset:
            raise SnapshotError(
                f"{child}: belongs to dataset {match['dataset']!r}, not {dataset!r}. "
                f"Move it to {rawdata / match['dataset']}/ or rename it to {match['date']}__{dataset}."
            )
        try:
            dt.date.fromisoformat(match["date"])
        except ValueError as exc:
            raise SnapshotError(f"{child}: {match['date']} is not a valid date ({exc}).") from exc
        found[match["date"]] = child
    dates = sorted(found)
    return [Snapshot(dataset, date, found[date], i) for i, date in enumerate(dates)]
