"""What the rules pass to their commands: settings per dataset and the option strings built from them."""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import REPO
from iterseg.config import load_settings
from iterseg.rawdata.discovery import Snapshot
from iterseg.rule_params import Params

pytestmark = pytest.mark.unit

DATES = ("2026-01-15", "2026-03-02")


@pytest.fixture
def params(monkeypatch: pytest.MonkeyPatch) -> Params:
    monkeypatch.chdir(REPO)  # the demo config names config/roi_demo.yaml relative to the project
    config = {**yaml.safe_load((REPO / "config/config.yaml").read_text())}
    config.update(yaml.safe_load((REPO / "config/demo.yaml").read_text()))
    snaps = [Snapshot("demo", d, Path(f"data/rawdata/demo/{d}__demo"), i) for i, d in enumerate(DATES)]
    return Params(load_settings(config), {"demo": snaps})


def job(date: str) -> SimpleNamespace:
    return SimpleNamespace(dataset="demo", date=date, fold="0")


def test_the_first_iteration_holds_out_its_patients_and_later_ones_keep_that_test_set(params: Params) -> None:
    first = params.test_set_args(job(DATES[0]), SimpleNamespace(first=[]))
    assert first == "--test-fraction 0.2 --test-seed 0 --test-patients P003 P004"
    later = params.test_set_args(job(DATES[1]), SimpleNamespace(first="data/x y/assembled.json"))
    assert later == "--test-set-from 'data/x y/assembled.json'"


def test_plans_overrides_shape_the_first_iteration_only(params: Params) -> None:
    assert params.first_plans_args(job(DATES[0])).startswith('--overrides \'{"batch_size": 2')
    assert params.first_plans_args(job(DATES[1])) == ""


def test_the_planner_reaches_the_first_plan_command_and_the_classic_one_adds_nothing(params: Params) -> None:
    from iterseg.cli import app

    # the classic planner: the plan jobs' parameters as before nnunet.planner existed
    overrides = json.dumps(dict(params.settings.nnunet.plans_overrides or {}), sort_keys=True)
    assert params.first_plans_args(job(DATES[0])) == f"--overrides {shlex.quote(overrides)}"
    plain = Params(load_settings({"datasets": {"demo": {"dataset_id": 9}}}), params.datasets)
    assert plain.first_plans_args(job(DATES[0])) == ""
    resenc = {"datasets": {"demo": {"dataset_id": 9}}, "nnunet": {"planner": "nnUNetPlannerResEncL"}}
    chosen = Params(load_settings(resenc), params.datasets)
    assert chosen.first_plans_args(job(DATES[0])) == "--planner nnUNetPlannerResEncL"
    assert chosen.first_plans_args(job(DATES[1])) == ""  # later iterations transfer the first one's plans
    both = copy.deepcopy(resenc)
    both["nnunet"]["plans_overrides"] = {"batch_size": 2}
    args = Params(load_settings(both), params.datasets).first_plans_args(job(DATES[0]))
    assert args == "--overrides '{\"batch_size\": 2}' --planner nnUNetPlannerResEncL"
    base = "plan --work w --dataset-name d --configuration c --plans p --output o".split()
    parsed = app.build_parser().parse_args([*base, *shlex.split(args)])
    assert (parsed.planner, json.loads(parsed.overrides)) == ("nnUNetPlannerResEncL", {"batch_size": 2})
    assert app.build_parser().parse_args(base).planner == "ExperimentPlanner"


def test_the_first_iteration_and_fine_tuning_have_their_own_schedules(params: Params) -> None:
    assert params.schedule_args(job(DATES[0])) == "--epochs 12"
    assert params.schedule_args(job(DATES[1])) == "--epochs 8 --initial-lr 0.002"
    assert params.trainer(job(DATES[1])) == "nnUNetTrainerIterSegDemo"
    assert params.nnunet_name(job(DATES[1])) == "Dataset902_demo_20260302"


def test_optional_inputs_become_flags_only_when_present(params: Params) -> None:
    none = SimpleNamespace(previous=[], source=[])
    assert params.previous_assembled_arg(job(DATES[0]), none) == ""
    assert params.pretrained_arg(job(DATES[0]), none) == ""
    assert params.plans_source_arg(job(DATES[0]), none) == ""
    some = SimpleNamespace(previous="a b.json", source="p.json")
    assert params.previous_iteration_arg(job(DATES[1]), some) == "--previous 'a b.json'"
    assert params.pretrained_arg(job(DATES[1]), some) == "--pretrained-from a b.json"
    assert params.plans_source_arg(job(DATES[1]), some) == "--source-record p.json"


def test_dataset_settings_and_the_config_a_dataset_depends_on(params: Params) -> None:
    assert params.modality(job(DATES[0])) == "CT"
    assert params.roi_yaml(job(DATES[0])) == "config/roi_demo.yaml"
    assert params.inbox_dir(job(DATES[0])) == "data/rawdata/demo/inbox"
    assert params.unrefined_arg(job(DATES[0])) == ""
    assert '"datasets": {"demo":' in params.config_json(job(DATES[0]))


def test_the_seg_encoding_reaches_the_predict_command(params: Params) -> None:
    import argparse

    from iterseg.cli.common import add_seg_options, seg_options
    from iterseg.dicom.seg_options import SegOptions, SegTransferSyntax

    assert params.seg_args(job(DATES[0])) == "--transfer-syntax deflated"
    changed = load_settings(
        {"datasets": {"demo": {"dataset_id": 9, "seg": {"transfer_syntax": "explicit_vr_little_endian",
                                                        "omit_empty_frames": False}}}}
    )  # fmt: skip
    args = Params(changed, params.datasets).seg_args(job(DATES[0]))
    assert args == "--transfer-syntax explicit_vr_little_endian --keep-empty-frames"
    parser = argparse.ArgumentParser()
    add_seg_options(parser)
    parsed = seg_options(parser.parse_args(args.split()))
    assert parsed == SegOptions(SegTransferSyntax.EXPLICIT_VR_LITTLE_ENDIAN, omit_empty_frames=False)
    assert seg_options(parser.parse_args([])) == SegOptions()


def test_the_inference_settings_reach_predict_and_evaluate(params: Params) -> None:
    import argparse

    from iterseg.cli.common import inference
    from iterseg.cli.steps import _add_inference_args
    from iterseg.nnunet.ensemble import Inference

    assert params.inference_args(job(DATES[0])) == "--tile-step-size 0.5"
    fast = load_settings(
        {
            "datasets": {"demo": {"dataset_id": 9}},
            "nnunet": {"inference": {"tile_step_size": 1, "use_mirroring": False}},
        }
    )
    args = Params(fast, params.datasets).inference_args(job(DATES[0]))
    assert args == "--tile-step-size 1.0 --no-mirroring"
    parser = argparse.ArgumentParser()
    _add_inference_args(parser)
    assert inference(parser.parse_args(args.split())) == Inference(1.0, use_mirroring=False)
    assert inference(parser.parse_args([])) == Inference()
