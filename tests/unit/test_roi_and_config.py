import copy
from pathlib import Path

import pytest
from iterseg.config import load_settings
from iterseg.errors import ConfigError
from iterseg.roi import label_values, load_roi_yaml

pytestmark = pytest.mark.unit


def test_roi_yaml_keeps_file_order(tmp_path: Path) -> None:
    path = tmp_path / "roi.yaml"
    path.write_text("tumour: ['^gtv']\nliver: liver\n")
    labels = load_roi_yaml(path)
    assert labels == {"tumour": ["^gtv"], "liver": ["liver"]}
    assert label_values(labels) == {"background": 0, "tumour": 1, "liver": 2}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- liver\n", "expected a mapping"),
        ("liver: []\n", "needs a regex"),
        ("liver: ['(unclosed']\n", "does not compile"),
        ("background: ['x']\n", "not usable"),
        ("liver: [1]\n", "needs a regex"),
    ],
)
def test_bad_roi_yaml_names_file_and_label(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "roi_x.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected) as info:
        load_roi_yaml(path)
    assert str(path) in str(info.value)


def test_missing_roi_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ROI YAML not found"):
        load_roi_yaml(tmp_path / "nope.yaml")


BASE = {"datasets": {"liver": {"dataset_id": 101}}}


def test_defaults_filled_from_schema() -> None:
    settings = load_settings(copy.deepcopy(BASE))
    assert settings.nnunet.trainer == "nnUNetTrainer"
    assert settings.nnunet.folds == ("0", "1", "2", "3", "4")
    assert settings.nnunet.train_on == "all_snapshots"
    assert settings.nnunet.device == "cuda"
    ds = settings.datasets["liver"]
    assert ds.roi_yaml == Path("config/roi_liver.yaml")
    assert ds.modality == "CT"
    assert ds.allow_unrefined_predictions is False
    assert settings.rawdata == Path("data/rawdata")


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"nnunet": {"folds": [7]}}, "nnunet.folds.0"),
        ({"nnunet": {"devcie": "cpu"}}, "'devcie' was unexpected"),
        ({"nnunet": {"train_on": "everything"}}, "nnunet.train_on"),
        ({"datasets": {"liver": {"dataset_id": 1000}}}, "datasets.liver.dataset_id"),
        ({"datasets": {"liver": {"modality": "CT"}}}, "'dataset_id' is a required property"),
    ],
)
def test_wrong_key_or_value_gives_one_clear_message(patch: dict, expected: str) -> None:
    config = {**copy.deepcopy(BASE), **patch}
    with pytest.raises(ConfigError, match="invalid configuration") as info:
        load_settings(config)
    assert expected in str(info.value)
    assert "config.schema.yaml" in str(info.value)


def test_repository_configs_are_valid() -> None:
    import yaml

    repo = Path(__file__).resolve().parents[2]
    merged = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    demo = yaml.safe_load((repo / "config" / "demo.yaml").read_text())
    merged["datasets"] = demo["datasets"]
    merged["nnunet"].update(demo["nnunet"])
    settings = load_settings(merged)
    assert settings.nnunet.trainer == "nnUNetTrainerIterSegDemo"
    assert load_roi_yaml(repo / settings.datasets["demo"].roi_yaml) == {
        "liver": ["^liver$"],
        "tumour": ["^gtv.*", "tumou?r"],
    }


def test_iteration_settings_are_typed_and_checked() -> None:
    import yaml

    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "config" / "demo.yaml").read_text())
    settings = load_settings(config)
    demo = settings.datasets["demo"]
    assert demo.test_patients == ("P003", "P004") and demo.missing_roi == "ignore"
    assert settings.nnunet.schedule(first=True).epochs == 12
    fine = settings.nnunet.schedule(first=False)
    assert (fine.trainer, fine.epochs, fine.initial_lr) == ("nnUNetTrainerIterSegDemo", 8, 0.002)
    assert settings.nnunet.plans_overrides == {
        "n_stages": 4,
        "features_per_stage": [16, 32, 64, 128],
        "batch_size": 2,
        "patch_size": [32, 48, 48],
    }
    region = copy.deepcopy(config)
    region["datasets"]["demo"]["mask_saving_strategy"] = "region_mask"
    with pytest.raises(ConfigError, match="missing_roi ignore needs mask_saving_strategy"):
        load_settings(region)
    bad = copy.deepcopy(config)
    bad["nnunet"]["plans_overrides"]["n_stage"] = 3
    bad["nnunet"]["fine_tuning"]["initial_lr"] = 2
    with pytest.raises(ConfigError) as info:
        load_settings(bad)
    assert "nnunet.plans_overrides" in str(info.value) and "nnunet.fine_tuning.initial_lr" in str(info.value)
    parallel = copy.deepcopy(config)
    parallel["nnunet"]["gpus_per_fold"] = 2
    with pytest.raises(ConfigError, match=r"needs nnunet\.device cuda, not 'cpu'"):
        load_settings(copy.deepcopy(parallel))
    parallel["nnunet"]["device"] = "cuda"
    with pytest.raises(ConfigError, match=r"nnunet\.first_iteration\.epochs, nnunet\.fine_tuning\.epochs"):
        load_settings(copy.deepcopy(parallel))
    for kind in ("first_iteration", "fine_tuning"):
        parallel["nnunet"][kind] = {"trainer": "nnUNetTrainer_250epochs"}
    assert load_settings(parallel).nnunet.gpus_per_fold == 2


def test_config_hash_ignores_key_order() -> None:
    from iterseg.config import config_hash

    assert config_hash({"a": 1, "b": {"c": 2, "d": 3}}) == config_hash({"b": {"d": 3, "c": 2}, "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_test_patients_by_fraction_are_reproducible_and_leave_training_cases() -> None:
    from iterseg.convert.assemble import HoldoutSpec, choose_test_patients

    patients = [f"P{n:03d}" for n in range(1, 21)]
    chosen = choose_test_patients(patients, HoldoutSpec(fraction=0.2, seed=1))
    assert len(chosen) == 4 and set(chosen) <= set(patients)
    assert chosen == choose_test_patients(list(reversed(patients)), HoldoutSpec(fraction=0.2, seed=1))
    assert chosen != choose_test_patients(patients, HoldoutSpec(fraction=0.2, seed=2))
    assert len(choose_test_patients(["A", "B"], HoldoutSpec(fraction=0.9))) == 1  # one always trains
    assert choose_test_patients(["A"], HoldoutSpec(fraction=0.5)) == []
    assert choose_test_patients(patients, HoldoutSpec(patients=("Z9", "P002"))) == ["P002", "Z9"]


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("liver", "10200004"),
        ("Liver_ref", "10200004"),
        ("leftKidney", "64033007"),
        ("Kidney_R", "64033007"),
        ("GTV_Tumour", "108369006"),
        ("parotid_L", "45289007"),
        ("BrainStem", "119238007"),
        ("SpinalCord", "2748008"),
        ("deliver", "85756007"),  # not the liver: the generic code
    ],
)
def test_built_in_terminology_matches_whole_words(name: str, code: str) -> None:
    from iterseg.dicom.codes import terminology

    assert terminology(name).type.value == code


def test_roi_yaml_code_overrides_are_checked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from iterseg.roi import load_roi_terms

    path = tmp_path / "roi.yaml"
    path.write_text("liver: ['^liver$']\nwidget: ['^widget$']\n")
    with caplog.at_level("WARNING"):
        terms = load_roi_terms(path)
    assert terms["liver"].known and not terms["widget"].known
    assert "'widget' has no built-in SNOMED CT code" in caplog.text
    path.write_text("liver: {patterns: ['^liver$'], code: {value: '1'}}\n")
    with pytest.raises(ConfigError, match="code needs value, scheme and meaning"):
        load_roi_terms(path)
    path.write_text("liver: {patterns: ['^liver$'], colour: [1, 2]}\n")
    with pytest.raises(ConfigError, match=r"colour must be \[r, g, b\]"):
        load_roi_terms(path)
    path.write_text("liver: {regexes: ['^liver$']}\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_roi_yaml(path)


def test_the_classic_planner_is_the_default_and_the_validated_config_is_unchanged() -> None:
    settings = load_settings(copy.deepcopy(BASE))
    assert (settings.nnunet.planner, settings.nnunet.plans) == ("ExperimentPlanner", "nnUNetPlans")
    # the promote and PACS steps take the validated config as a parameter: no new key in it
    assert settings.raw is not None and "planner" not in settings.raw["nnunet"]
    assert settings.raw["nnunet"]["plans"] == "nnUNetPlans"


@pytest.mark.parametrize(
    ("planner", "plans"),
    [
        ("ExperimentPlanner", "nnUNetPlans"),
        ("nnUNetPlannerResEncM", "nnUNetResEncUNetMPlans"),
        ("nnUNetPlannerResEncL", "nnUNetResEncUNetLPlans"),
        ("nnUNetPlannerResEncXL", "nnUNetResEncUNetXLPlans"),
    ],
)
def test_a_planner_without_plans_names_its_own_plans_everywhere(planner: str, plans: str) -> None:
    config = {**copy.deepcopy(BASE), "nnunet": {"planner": planner}}
    settings = load_settings(config)
    assert (settings.nnunet.planner, settings.nnunet.plans) == (planner, plans)
    assert config["nnunet"]["plans"] == plans  # the config snakemake holds names them too
    assert settings.raw is not None and settings.raw["nnunet"]["plans"] == plans
    assert load_settings(copy.deepcopy(settings.raw)).nnunet.plans == plans  # the promote/PACS steps' reload


def test_explicit_plans_are_kept_and_another_planners_name_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    own = {**copy.deepcopy(BASE), "nnunet": {"planner": "nnUNetPlannerResEncL", "plans": "liverResEncL"}}
    with caplog.at_level("WARNING", logger="iterseg.config"):
        assert load_settings(own).nnunet.plans == "liverResEncL"
    assert not caplog.records
    # config/config.yaml sets plans: nnUNetPlans, the classic planner's name
    leftover = {**copy.deepcopy(BASE), "nnunet": {"planner": "nnUNetPlannerResEncM", "plans": "nnUNetPlans"}}
    with caplog.at_level("WARNING", logger="iterseg.config"):
        assert load_settings(leftover).nnunet.plans == "nnUNetPlans"
    assert "nnunet.plans: nnUNetPlans is the plans identifier of nnU-Net's ExperimentPlanner" in caplog.text
    assert "Remove nnunet.plans to use nnUNetResEncUNetMPlans" in caplog.text


def test_an_unknown_planner_names_the_key_and_the_allowed_planners() -> None:
    config = {**copy.deepcopy(BASE), "nnunet": {"planner": "nnUNetPlannerResEncS"}}
    with pytest.raises(ConfigError, match="invalid configuration") as info:
        load_settings(config)
    message = str(info.value)
    assert "config key nnunet.planner: 'nnUNetPlannerResEncS' is not one of" in message
    for size in ("M", "L", "XL"):
        assert f"'nnUNetPlannerResEnc{size}'" in message
    assert "'ExperimentPlanner'" in message


def test_channels_are_read_in_config_order_and_checked() -> None:
    import yaml

    repo = Path(__file__).resolve().parents[2]
    config = yaml.safe_load((repo / "config" / "demo_mr.yaml").read_text())
    (ds,) = load_settings(copy.deepcopy(config)).datasets.values()
    assert [(c.name, c.patterns) for c in ds.channels] == [("FLAIR", ("flair",)), ("T1", ("^t1",))]
    config["datasets"]["demo-mr"]["channels"] = {"T2": ["t2"], "FLAIR": ["flair"]}
    assert [c.name for c in load_settings(copy.deepcopy(config)).datasets["demo-mr"].channels] == [
        "T2",
        "FLAIR",
    ]
    config["datasets"]["demo-mr"]["channels"] = {"FLAIR": ["flair"]}
    with pytest.raises(ConfigError, match=r"datasets\.demo-mr\.channels"):
        load_settings(copy.deepcopy(config))  # one series per case needs no channels
    config["datasets"]["demo-mr"]["channels"] = {"FLAIR": ["flair"], "T1": ["t1(?!"]}
    with pytest.raises(ConfigError, match=r"datasets.demo-mr.channels.T1: 't1\(\?!' is not a regex"):
        load_settings(copy.deepcopy(config))
