"""nnU-Net models without training: a planned dataset's network with random weights per fold.

Inference costs the same whatever the weights, and folds with different random weights
disagree everywhere, which exposes any mix-up of folds: enough to test and time prediction.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

TRAINER = "nnUNetTrainer"


def random_fold_model(
    preprocessed: Path, out: Path, folds: Sequence[int], configuration: str = "3d_fullres"
) -> Path:
    """nnU-Net's trained-model folder under ``out`` for ``folds``, from the plans in ``preprocessed``.

    ``preprocessed`` is nnU-Net's preprocessed folder of the dataset (``dataset.json`` and
    ``nnUNetPlans.json``); fold k's weights are seeded with k.
    """
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    model = out / f"{TRAINER}__nnUNetPlans__{configuration}"
    model.mkdir(parents=True)
    shutil.copy(preprocessed / "dataset.json", model / "dataset.json")
    shutil.copy(preprocessed / "nnUNetPlans.json", model / "plans.json")
    plans = PlansManager(json.loads((model / "plans.json").read_text()))
    dataset = json.loads((model / "dataset.json").read_text())
    config = plans.get_configuration(configuration)
    heads = plans.get_label_manager(dataset).num_segmentation_heads
    channels = determine_num_input_channels(plans, config, dataset)
    for fold in folds:
        torch.manual_seed(fold)
        network = nnUNetTrainer.build_network_architecture(
            plans, config, channels, heads, enable_deep_supervision=False
        )
        (model / f"fold_{fold}").mkdir()
        torch.save(
            {"network_weights": network.state_dict(), "trainer_name": TRAINER,
             "init_args": {"configuration": configuration}, "inference_allowed_mirroring_axes": (0, 1, 2)},
            model / f"fold_{fold}" / "checkpoint_final.pth",
        )  # fmt: skip
    return model
