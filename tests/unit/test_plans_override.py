import copy
import logging
import sys
from pathlib import Path
from typing import Any

import pytest
from iterseg.errors import PlanOverrideError, TrainingError
from iterseg.nnunet.plans_override import PlansOverrides, apply_plans_overrides, count_parameters

pytestmark = pytest.mark.unit

SOURCE = "config nnunet.plans_overrides"
DATASET_JSON = {
    "channel_names": {"0": "CT"},
    "labels": {"background": 0, "liver": 1, "tumour": 2},
    "numTraining": 7,
    "file_ending": ".nii.gz",
}


def _architecture(dim: int, features: list[int], strides: list[list[int]]) -> dict[str, Any]:
    n = len(features)
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n,
            "features_per_stage": features,
            "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
            "kernel_sizes": [[3] * dim for _ in range(n)],
            "strides": strides,
            "n_conv_per_stage": [2] * n,
            "n_conv_per_stage_decoder": [2] * (n - 1),
            "conv_bias": True,
            "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def _configuration(dim: int, batch: int, patch: list[int], spacing: list[float], **arch: Any) -> dict:
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    return {
        "data_identifier": f"nnUNetPlans_{dim}d" + ("_fullres" if dim == 3 else ""),
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": batch,
        "patch_size": patch,
        "median_image_size_in_voxels": [float(p) for p in patch],
        "spacing": spacing,
        "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": resampling,
        "resampling_fn_seg_kwargs": {**resampling, "is_seg": True, "order": 1},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {**resampling, "order": 1},
        "architecture": _architecture(dim, **arch),
        "batch_dice": dim == 2,
    }


@pytest.fixture
def plans() -> dict[str, Any]:
    """nnU-Net 2.8.1's nnUNetPlans.json as its planner wrote it for the demo dataset."""
    return {
        "dataset_name": "Dataset901_demo_20260115",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [4.0, 3.0, 3.0],
        "original_median_shape_after_transp": [32, 64, 64],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "2d": _configuration(
                2,
                11,
                [64, 64],
                [3.0, 3.0],
                features=[32, 64, 128, 256, 512],
                strides=[[1, 1]] + [[2, 2]] * 4,
            ),
            "3d_fullres": _configuration(
                3,
                2,
                [32, 64, 64],
                [4.0, 3.0, 3.0],
                features=[32, 64, 128, 256, 320],
                strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
            ),
            # a user-defined configuration as in nnU-Net's documentation
            "3d_fullres_bs4": {"inherits_from": "3d_fullres", "batch_size": 4},
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "max": 159.0,
                "mean": 100.6,
                "median": 109.0,
                "min": -61.0,
                "percentile_00_5": -34.0,
                "percentile_99_5": 140.0,
                "std": 33.4,
            }
        },
    }


def _kwargs(plans: dict[str, Any], conf: str = "3d_fullres") -> dict[str, Any]:
    return plans["configurations"][conf]["architecture"]["arch_kwargs"]


def test_from_mapping_turns_lists_into_tuples_and_rejects_unknown_keys() -> None:
    o = PlansOverrides.from_mapping({"patch_size": [16, 32, 32], "n_stages": 3, "spacing": [2, 1.5, 1.5]})
    assert o == PlansOverrides(patch_size=(16, 32, 32), n_stages=3, spacing=(2, 1.5, 1.5))
    assert PlansOverrides.from_mapping(None).is_empty()
    assert PlansOverrides.from_mapping({}).is_empty()
    assert not o.is_empty()
    with pytest.raises(PlanOverrideError, match=r"unknown key 'patch'.*allowed: spacing, patch_size"):
        PlansOverrides.from_mapping({"patch": [1, 2, 3]})
    with pytest.raises(PlanOverrideError, match="spacing must be a list"):
        PlansOverrides.from_mapping({"spacing": 2.0})


def test_each_override_lands_and_input_is_not_mutated(
    plans: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    before = copy.deepcopy(plans)
    overrides = PlansOverrides(
        spacing=(5, 2.5, 2.5), patch_size=(16, 48, 48), features_per_stage=(8, 16, 32, 64, 64), batch_size=3
    )
    with caplog.at_level(logging.INFO, logger="iterseg.nnunet.plans_override"):
        new = apply_plans_overrides(plans, "3d_fullres", overrides, SOURCE)
    assert plans == before
    conf = new["configurations"]["3d_fullres"]
    assert conf["spacing"] == [5.0, 2.5, 2.5]
    assert conf["patch_size"] == [16, 48, 48]
    assert conf["batch_size"] == 3
    assert _kwargs(new)["features_per_stage"] == [8, 16, 32, 64, 64]
    assert _kwargs(new)["n_stages"] == 5
    assert new["configurations"]["2d"] == plans["configurations"]["2d"]
    assert "batch_size 2 -> 3" in caplog.text
    assert SOURCE in caplog.text
    assert apply_plans_overrides(plans, "3d_fullres", PlansOverrides(), SOURCE) == plans


def test_fewer_stages_truncate_every_per_stage_list_and_shrink_the_network(plans: dict[str, Any]) -> None:
    new = apply_plans_overrides(plans, "3d_fullres", PlansOverrides(n_stages=3), SOURCE)
    kw = _kwargs(new)
    assert kw["n_stages"] == 3
    assert kw["features_per_stage"] == [32, 64, 128]
    assert kw["kernel_sizes"] == [[3, 3, 3]] * 3
    assert kw["strides"] == [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
    assert kw["n_conv_per_stage"] == [2, 2, 2]
    assert kw["n_conv_per_stage_decoder"] == [2, 2]
    assert count_parameters(new, "3d_fullres", DATASET_JSON) < count_parameters(
        plans, "3d_fullres", DATASET_JSON
    )


def test_override_of_an_inheriting_configuration_is_written_into_its_own_dict(
    plans: dict[str, Any],
) -> None:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    new = apply_plans_overrides(plans, "3d_fullres_bs4", PlansOverrides(n_stages=4, batch_size=1), SOURCE)
    own = new["configurations"]["3d_fullres_bs4"]
    assert own["inherits_from"] == "3d_fullres"
    assert own["batch_size"] == 1
    assert own["architecture"]["arch_kwargs"]["n_stages"] == 4
    assert new["configurations"]["3d_fullres"] == plans["configurations"]["3d_fullres"]
    resolved = PlansManager(new).get_configuration("3d_fullres_bs4")
    assert resolved.network_arch_init_kwargs["strides"] == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert resolved.patch_size == [32, 64, 64]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            PlansOverrides(n_stages=6),
            r"n_stages must be an integer from 2 to 5 \(nnU-Net planned 5.*invented",
        ),
        (
            PlansOverrides(features_per_stage=(8, 16, 32)),
            r"features_per_stage has 3 value\(s\) but must have 5",
        ),
        (PlansOverrides(n_stages=3, features_per_stage=(8, 16, 32, 64)), "features_per_stage has 4"),
        (PlansOverrides(features_per_stage=(8, 16, 0, 64, 64)), "features_per_stage must be positive"),
        (
            PlansOverrides(patch_size=(30, 64, 50)),
            r"patch_size \[30, 64, 50\] must be divisible per axis by the network's total stride "
            r"\[8, 16, 16\]"
            r".*axis 0: 30 -> \[24, 32\]; axis 2: 50 -> \[48, 64\]",
        ),
        (PlansOverrides(patch_size=(32, 64)), r"patch_size has 2 value\(s\) but must have 3"),
        (PlansOverrides(spacing=(1.0, 1.0)), r"spacing has 2 value\(s\) but must have 3"),
        (PlansOverrides(spacing=(1.0, -1.0, 1.0)), "spacing must be positive numbers"),
        (PlansOverrides(batch_size=0), "batch_size must be an integer >= 1, got 0"),
    ],
)
def test_invalid_overrides_name_the_key_and_the_allowed_values(
    plans: dict[str, Any], overrides: PlansOverrides, expected: str
) -> None:
    with pytest.raises(PlanOverrideError, match=expected) as info:
        apply_plans_overrides(plans, "3d_fullres", overrides, SOURCE)
    assert str(info.value).startswith(SOURCE)


def test_fewer_stages_allow_a_patch_that_the_planned_depth_would_not(plans: dict[str, Any]) -> None:
    overrides = PlansOverrides(n_stages=3, patch_size=(20, 36, 36))
    new = apply_plans_overrides(plans, "3d_fullres", overrides, SOURCE)
    assert new["configurations"]["3d_fullres"]["patch_size"] == [20, 36, 36]


def test_all_problems_are_reported_at_once(plans: dict[str, Any]) -> None:
    overrides = PlansOverrides(spacing=(1.0,), batch_size=0, patch_size=(33, 64, 64))
    with pytest.raises(PlanOverrideError) as info:
        apply_plans_overrides(plans, "3d_fullres", overrides, SOURCE)
    for key in ("spacing", "batch_size", "patch_size"):
        assert key in str(info.value)


def test_unknown_configuration_lists_the_available_ones(plans: dict[str, Any]) -> None:
    with pytest.raises(PlanOverrideError, match=r"no configuration '3d_lowres'.*'2d', '3d_fullres'"):
        apply_plans_overrides(plans, "3d_lowres", PlansOverrides(batch_size=1), SOURCE)


def test_2d_configuration_checks_two_axes(plans: dict[str, Any]) -> None:
    new = apply_plans_overrides(plans, "2d", PlansOverrides(spacing=(1.5, 1.5), patch_size=(32, 48)), SOURCE)
    assert new["configurations"]["2d"]["patch_size"] == [32, 48]
    with pytest.raises(PlanOverrideError, match="total stride \\[16, 16\\]"):
        apply_plans_overrides(plans, "2d", PlansOverrides(patch_size=(32, 40)), SOURCE)


@pytest.mark.parametrize("conf", ["2d", "3d_fullres"])
def test_count_parameters_matches_nnunets_own_network(plans: dict[str, Any], conf: str) -> None:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    dataset_json = {**DATASET_JSON, "labels": {"background": 0, "liver": 1, "tumour": 2, "ignore": 3}}
    new = apply_plans_overrides(plans, conf, PlansOverrides(n_stages=4), SOURCE)
    arch = new["configurations"][conf]["architecture"]
    net = get_network_from_plans(
        arch["network_class_name"],
        arch["arch_kwargs"],
        arch["_kw_requires_import"],
        input_channels=1,
        output_channels=3,  # background, liver, tumour; "ignore" is not an output
        deep_supervision=True,
    )
    assert count_parameters(new, conf, dataset_json) == sum(p.numel() for p in net.parameters())


def test_count_parameters_says_when_nnunet_cannot_build(plans: dict[str, Any]) -> None:
    _kwargs(plans)["n_conv_per_stage_decoder"] = [2]
    with pytest.raises(PlanOverrideError, match="nnU-Net cannot build the '3d_fullres' network"):
        count_parameters(plans, "3d_fullres", DATASET_JSON)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"epochs": 0}, "epochs must be an integer >= 1, got 0"),
        ({"epochs": 2.5}, "epochs must be an integer >= 1"),
        ({"initial_lr": 0.0}, "initial_lr must be a number between 0 and 1"),
        ({"initial_lr": 1.0}, "initial_lr must be a number between 0 and 1"),
        ({"epochs": -1, "initial_lr": 2}, "epochs .*; initial_lr"),
    ],
)
def test_invalid_trainer_settings_fail_before_nnunet_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: dict[str, Any], expected: str
) -> None:
    from iterseg.nnunet import train

    def _never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("nnU-Net must not be configured for invalid settings")

    monkeypatch.setattr(train, "configure_nnunet", _never)
    monkeypatch.setattr(train, "read_record", _never)
    monkeypatch.delitem(sys.modules, "nnunetv2.run.run_training", raising=False)
    with pytest.raises(TrainingError, match=expected):
        train.train_fold(tmp_path, tmp_path / "plan.json", "nnUNetTrainer", "0", "cpu", 1, **settings)
    assert "nnunetv2.run.run_training" not in sys.modules


RESENC = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"


@pytest.fixture
def resenc_plans(plans: dict[str, Any]) -> dict[str, Any]:
    """The demo's plans with the 3d_fullres network nnU-Net's ResEnc planners write (residual encoder)."""
    plans["plans_name"] = "nnUNetResEncUNetMPlans"
    plans["experiment_planner_used"] = "nnUNetPlannerResEncM"
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    kwargs = arch["arch_kwargs"]
    n = kwargs.pop("n_conv_per_stage") and kwargs["n_stages"]
    arch["network_class_name"] = RESENC
    kwargs["n_blocks_per_stage"] = [1, 3, 4, 6, 6][:n]
    kwargs["n_conv_per_stage_decoder"] = [1] * (n - 1)
    return plans


def test_fewer_stages_cut_the_resenc_encoder_blocks_and_decoder_stages(resenc_plans: dict[str, Any]) -> None:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    overrides = PlansOverrides(n_stages=3, features_per_stage=(16, 32, 64))
    new = apply_plans_overrides(resenc_plans, "3d_fullres", overrides, SOURCE)
    arch = new["configurations"]["3d_fullres"]["architecture"]
    assert arch["network_class_name"] == RESENC
    kw = arch["arch_kwargs"]
    assert (kw["n_stages"], kw["features_per_stage"]) == (3, [16, 32, 64])
    assert kw["n_blocks_per_stage"] == [1, 3, 4] and kw["n_conv_per_stage_decoder"] == [1, 1]
    assert kw["strides"] == [[1, 1, 1], [2, 2, 2], [2, 2, 2]] and "n_conv_per_stage" not in kw
    net = get_network_from_plans(
        RESENC, kw, arch["_kw_requires_import"], input_channels=1, output_channels=3, deep_supervision=True
    )
    assert type(net).__name__ == "ResidualEncoderUNet"
    parameters = count_parameters(new, "3d_fullres", DATASET_JSON)
    assert parameters == sum(p.numel() for p in net.parameters())
    assert parameters < count_parameters(resenc_plans, "3d_fullres", DATASET_JSON)


def test_resenc_overrides_that_do_not_fit_are_refused_naming_the_plans(resenc_plans: dict[str, Any]) -> None:
    where = r"\('3d_fullres' of plans 'nnUNetResEncUNetMPlans'\)"
    with pytest.raises(PlanOverrideError, match=where + r": n_stages must be an integer from 2 to 5"):
        apply_plans_overrides(resenc_plans, "3d_fullres", PlansOverrides(n_stages=6), SOURCE)
    wide = PlansOverrides(n_stages=4, features_per_stage=(8, 16, 32, 64, 64))
    with pytest.raises(PlanOverrideError, match=r"features_per_stage has 5 value\(s\) but must have 4"):
        apply_plans_overrides(resenc_plans, "3d_fullres", wide, SOURCE)
    _kwargs(resenc_plans)["n_blocks_per_stage"] = [1, 3]  # not one per stage: nnU-Net cannot build it
    with pytest.raises(PlanOverrideError, match="nnU-Net cannot build the '3d_fullres' network"):
        count_parameters(resenc_plans, "3d_fullres", DATASET_JSON)


def test_the_planners_and_their_plans_names_are_nnunets_own() -> None:
    import inspect

    import yaml
    from iterseg.config import SCHEMA_PATH
    from iterseg.nnunet.plan import DEFAULT_PLANNER, PLANNERS
    from iterseg.records import PlanRecord
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.experiment_planning.experiment_planners.residual_unets import residual_encoder_unet_planners

    classes = {name: getattr(residual_encoder_unet_planners, name, None) for name in PLANNERS}
    classes[DEFAULT_PLANNER] = ExperimentPlanner
    for name, plans_name in PLANNERS.items():
        assert inspect.signature(classes[name].__init__).parameters["plans_name"].default == plans_name
    schema = yaml.safe_load(SCHEMA_PATH.read_text())["properties"]["nnunet"]["properties"]
    assert schema["planner"]["enum"] == list(PLANNERS)
    assert "default" not in schema["planner"] and "default" not in schema["plans"]
    assert PlanRecord.__dataclass_fields__["planner"].default == DEFAULT_PLANNER
