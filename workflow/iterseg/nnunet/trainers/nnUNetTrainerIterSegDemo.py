"""A tiny nnU-Net trainer for the demo and the end-to-end test: minutes on a CPU, not days.

nnU-Net finds it through ``nnUNet_extTrainer`` (set by iterseg to this folder), for training
and prediction. Production runs use nnU-Net's own ``nnUNetTrainer``.
"""

from __future__ import annotations

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainerIterSegDemo(nnUNetTrainer):
    """3 epochs x 8 iterations, 2 validation iterations, no mirroring (halves validation time).

    A checkpoint every epoch (nnU-Net's default is every 50), so that continuing an
    interrupted fold can be shown within the demo's few epochs.
    """

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),  # noqa: B008 - nnU-Net's signature
    ) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 3
        self.num_iterations_per_epoch = 8
        self.num_val_iterations_per_epoch = 2
        self.save_every = 1  # a checkpoint per epoch: an interrupted fold continues from there

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):  # type: ignore[no-untyped-def] # noqa: N802
        """Keep nnU-Net's augmentation but switch mirroring off for training and inference."""
        rotation, dummy_2d, initial_patch_size, _ = (
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        )
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, None
