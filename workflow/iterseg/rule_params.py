"""What the rules pass to their commands: each dataset's settings and the option strings built from them.

``workflow/rules/common.smk`` makes one :class:`Params` at start-up; rules name its methods as
``params:`` functions (Snakemake calls them with the job's ``wildcards``, and ``input`` where a
flag depends on an optional input). Kept here, not in the rule files, so they are unit-tested.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from iterseg.nnunet.plan import DEFAULT_PLANNER
from iterseg.paths import snapshot_of
from iterseg.rawdata.discovery import nnunet_dataset_name

if TYPE_CHECKING:
    from iterseg.config import DatasetSettings, Schedule, Settings
    from iterseg.rawdata.discovery import Snapshot


class Params:
    """Per-job settings and option strings; every method takes the job's ``wildcards``."""

    def __init__(self, settings: Settings, datasets: Mapping[str, Sequence[Snapshot]]) -> None:
        self.settings = settings
        self.datasets = datasets

    def _dataset(self, wildcards: Any) -> DatasetSettings:
        return self.settings.datasets[wildcards.dataset]

    def _snapshot(self, wildcards: Any) -> Snapshot:
        return snapshot_of(self.datasets[wildcards.dataset], wildcards.date)

    def _schedule(self, wildcards: Any) -> Schedule:
        return self.settings.nnunet.schedule(first=self._snapshot(wildcards).index == 0)

    # --- the dataset's settings -------------------------------------------------------------------

    def roi_yaml(self, wildcards: Any) -> str:
        """The dataset's ROI YAML (an input of every step that needs the labels)."""
        return str(self._dataset(wildcards).roi_yaml)

    def modality(self, wildcards: Any) -> str:
        """CT or MR."""
        return self._dataset(wildcards).modality

    def channels_arg(self, wildcards: Any) -> str:
        """``--channels '<json>'`` of a multi-sequence dataset, else nothing."""
        from shlex import quote

        from iterseg.convert.channels import channels_to_json

        channels = self._dataset(wildcards).channels
        return f"--channels {quote(channels_to_json(channels))}" if channels else ""

    def mask_saving_strategy(self, wildcards: Any) -> str:
        """How overlapping ROIs combine into one label map."""
        return self._dataset(wildcards).mask_saving_strategy

    def duplicate_rule(self, wildcards: Any) -> str:
        """What two annotations of one series in one snapshot do (``duplicate_annotations``)."""
        return self._dataset(wildcards).duplicate_annotations

    def missing_roi(self, wildcards: Any) -> str:
        """What a case lacking some ROIs does in training (``missing_roi``)."""
        return self._dataset(wildcards).missing_roi

    def nsd_tolerance(self, wildcards: Any) -> float:
        """The surface-Dice tolerance in mm."""
        return self._dataset(wildcards).nsd_tolerance_mm

    def inbox_dir(self, wildcards: Any) -> str:
        """The dataset's inbox under rawdata."""
        return f"{self.settings.rawdata}/{wildcards.dataset}/{self.settings.inbox}"

    def nnunet_name(self, wildcards: Any) -> str:
        """The nnU-Net dataset name of the iteration (``DatasetNNN_<dataset>_<date>``)."""
        snap = self._snapshot(wildcards)
        return nnunet_dataset_name(snap.dataset, self._dataset(wildcards).dataset_id, snap.index, snap.date)

    def trainer(self, wildcards: Any) -> str:
        """The trainer class of the iteration: the first iteration's, or the fine-tuning one's."""
        return self._schedule(wildcards).trainer

    def config_json(self, wildcards: Any) -> str:
        """The settings this dataset's iterations depend on (other datasets' entries left out)."""
        raw = dict(self.settings.raw or {})
        raw["datasets"] = {wildcards.dataset: raw["datasets"][wildcards.dataset]}
        return json.dumps(raw, sort_keys=True)

    # --- option strings -----------------------------------------------------------------------------

    def inference_args(self, wildcards: Any) -> str:
        """``--tile-step-size`` (and ``--no-mirroring``): the inbox and the test set are predicted alike."""
        inference = self.settings.nnunet.inference
        return f"--tile-step-size {inference.tile_step_size}" + (
            "" if inference.use_mirroring else " --no-mirroring"
        )

    def seg_args(self, wildcards: Any) -> str:
        """``--transfer-syntax`` (and ``--keep-empty-frames``) of the dataset's ``seg`` settings."""
        seg = self._dataset(wildcards).seg
        keep = "" if seg.omit_empty_frames else " --keep-empty-frames"
        return f"--transfer-syntax {seg.transfer_syntax.value}{keep}"

    def unrefined_arg(self, wildcards: Any) -> str:
        """``--allow-unrefined-predictions`` where the dataset allows them."""
        return "--allow-unrefined-predictions" if self._dataset(wildcards).allow_unrefined_predictions else ""

    # `input` is the name Snakemake passes a params function's inputs by
    def test_set_args(self, wildcards: Any, input: Any) -> str:
        """The first iteration's test set for later ones; the dataset's hold-out rule for the first."""
        if input.first:
            return f"--test-set-from {shlex.quote(input.first)}"
        ds = self._dataset(wildcards)
        patients = " ".join(shlex.quote(p) for p in ds.test_patients)
        rule = f"--test-fraction {ds.test_fraction} --test-seed {ds.test_seed} --test-patients {patients}"
        return rule.rstrip()

    def previous_assembled_arg(self, wildcards: Any, input: Any) -> str:
        """``--previous`` with the previous iteration's ``assembled.json``, if any."""
        return f"--previous {shlex.quote(input.previous)}" if input.previous else ""

    def first_plans_args(self, wildcards: Any) -> str:
        """``--overrides`` and ``--planner``, where set: they shape the first iteration's plans only.

        Later iterations transfer those plans. With nnU-Net's classic planner the string is what
        it was before ``--planner`` existed, so the plan jobs of existing iterations keep their
        parameters (Snakemake re-runs a job whose parameters change).
        """
        nn = self.settings.nnunet
        if self._snapshot(wildcards).index > 0:
            return ""
        args = []
        if nn.plans_overrides:
            args.append(f"--overrides {shlex.quote(json.dumps(dict(nn.plans_overrides), sort_keys=True))}")
        if nn.planner != DEFAULT_PLANNER:
            args.append(f"--planner {shlex.quote(nn.planner)}")
        return " ".join(args)

    def plans_source_arg(self, wildcards: Any, input: Any) -> str:
        """``--source-record`` with the first iteration's ``planned.json``, for later iterations."""
        return f"--source-record {input.source}" if input.source else ""

    def schedule_args(self, wildcards: Any) -> str:
        """``--epochs`` / ``--initial-lr`` of the iteration's schedule, where set."""
        sched = self._schedule(wildcards)
        args = []
        if sched.epochs is not None:
            args.append(f"--epochs {sched.epochs}")
        if sched.initial_lr is not None:
            args.append(f"--initial-lr {sched.initial_lr}")
        return " ".join(args)

    def pretrained_arg(self, wildcards: Any, input: Any) -> str:
        """``--pretrained-from`` with the previous iteration's fold record, for later iterations."""
        return f"--pretrained-from {input.previous}" if input.previous else ""

    def previous_iteration_arg(self, wildcards: Any, input: Any) -> str:
        """``--previous`` with the previous iteration's ``iteration.json``, if any."""
        return f"--previous {shlex.quote(input.previous)}" if input.previous else ""
