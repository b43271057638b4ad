"""nnU-Net's residual-encoder planner plans the first iteration; a later iteration transfers its plans.

A tiny synthetic dataset (two 24x40x40 CT-like volumes with a sphere) planned by nnU-Net itself:
the plans identifier, the network class and the overridden stages are nnU-Net's output.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from iterseg.config import load_settings
from iterseg.errors import PlanOverrideError
from iterseg.nnunet.plan import plan_dataset
from iterseg.paths import plans_file, preprocessed_dir
from iterseg.records import PlanRecord, read_record, write_record

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIN = Path(sys.executable).parent
FIRST, LATER = "Dataset951_resenc_20260115", "Dataset952_resenc_20260302"
RESENC = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
# what configure_nnunet sets: restored after each planning in this process
NNUNET_ENV = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer", "nnUNet_n_proc_DA",
              "nnUNet_def_n_proc", "nnUNet_compile")  # fmt: skip
OVERRIDES = {"n_stages": 3, "features_per_stage": [16, 32, 64]}


def _raw_dataset(work: Path, name: str, cases: int = 2) -> None:
    """nnU-Net's raw dataset ``name`` in ``work``: CT-like noise with a brighter sphere, labelled 1."""
    import SimpleITK as sitk

    raw = work / "nnUNet_raw" / name
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    rng = np.random.default_rng(len(name) + cases)
    z, y, x = np.mgrid[:24, :40, :40]
    for k in range(cases):
        label = ((2 * (z - 12)) ** 2 + (y - 20 + k) ** 2 + (x - 20 - k) ** 2 < 100).astype(np.uint8)
        image = (rng.normal(40, 20, label.shape) + 100 * label).astype(np.int16)
        files = {f"imagesTr/c{k}_0000.nii.gz": image, f"labelsTr/c{k}.nii.gz": label}
        for path, array in files.items():
            volume = sitk.GetImageFromArray(array)
            volume.SetSpacing((1.0, 1.0, 2.0))
            sitk.WriteImage(volume, str(raw / path))
    dataset = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}, "numTraining": cases,
               "file_ending": ".nii.gz"}  # fmt: skip
    (raw / "dataset.json").write_text(json.dumps(dataset))


def _plan(work: Path, name: str, plans: str, planner: str, overrides: dict[str, object]) -> PlanRecord:
    with pytest.MonkeyPatch.context() as env:
        for key in NNUNET_ENV:
            env.setenv(key, "")
        return plan_dataset(work, name, "3d_fullres", plans, 1, overrides=overrides, planner=planner)


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first iteration planned by nnUNetPlannerResEncM with the config's plans (not set: its own)."""
    work = tmp_path_factory.mktemp("first")
    _raw_dataset(work, FIRST)
    config = {"datasets": {"resenc": {"dataset_id": 951}}, "nnunet": {"planner": "nnUNetPlannerResEncM"}}
    nn = load_settings(config).nnunet
    write_record(work / "planned.json", _plan(work, FIRST, nn.plans, nn.planner, OVERRIDES))
    return work


def test_the_resenc_planner_plans_under_its_own_identifier_and_takes_the_overrides(first: Path) -> None:
    record = read_record(first / "planned.json", PlanRecord)
    assert (record.planner, record.plans) == ("nnUNetPlannerResEncM", "nnUNetResEncUNetMPlans")
    plan = json.loads(plans_file(first, FIRST, record.plans).read_text())
    assert (plan["plans_name"], plan["experiment_planner_used"]) == (record.plans, record.planner)
    assert not (preprocessed_dir(first, FIRST) / "nnUNetPlans.json").exists()
    assert record.architecture["network_class_name"] == RESENC
    kwargs = record.architecture["arch_kwargs"]
    assert (kwargs["n_stages"], kwargs["features_per_stage"]) == (3, [16, 32, 64])
    assert kwargs["n_blocks_per_stage"] == [1, 3, 4] and kwargs["n_conv_per_stage_decoder"] == [1, 1]
    assert record.architecture == plan["configurations"]["3d_fullres"]["architecture"]
    assert record.overrides == OVERRIDES and record.parameters and record.parameters > 0
    data = preprocessed_dir(first, FIRST) / plan["configurations"]["3d_fullres"]["data_identifier"]
    assert len(list(data.iterdir())) >= 2  # both cases preprocessed with these plans


def test_a_later_iteration_transfers_the_resenc_plans_and_records_their_planner(
    first: Path, tmp_path: Path
) -> None:
    _raw_dataset(tmp_path, LATER, cases=3)
    source = read_record(first / "planned.json", PlanRecord)
    record_path = tmp_path / "planned.json"
    command = [str(BIN / "iterseg"), "plan", "--work", str(tmp_path), "--dataset-name", LATER,
               "--configuration", "3d_fullres", "--plans", source.plans, "--processes", "1",
               "--source-record", str(first / "planned.json"), "--output", str(record_path)]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)  # as plan_preprocess runs it
    assert run.returncode == 0, run.stderr[-3000:]
    record = read_record(record_path, PlanRecord)
    assert (record.planner, record.plans, record.plans_source) == (source.planner, source.plans, FIRST)
    assert record.architecture == source.architecture  # the first iteration's weights fit


def test_an_override_the_resenc_plan_cannot_take_is_refused_before_preprocessing(tmp_path: Path) -> None:
    _raw_dataset(tmp_path, FIRST)
    with pytest.raises(PlanOverrideError, match=r"plans 'liverResEncM'.*n_stages must be an integer from 2"):
        _plan(tmp_path, FIRST, "liverResEncM", "nnUNetPlannerResEncM", {"n_stages": 9})
    pre = preprocessed_dir(tmp_path, FIRST)
    plan = json.loads((pre / "liverResEncM.json").read_text())  # an explicit name: nnU-Net wrote it so
    assert plan["configurations"]["3d_fullres"]["architecture"]["network_class_name"] == RESENC
    assert not (pre / plan["configurations"]["3d_fullres"]["data_identifier"]).exists()
