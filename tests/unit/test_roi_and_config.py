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
