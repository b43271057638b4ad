"""A tiny nnU-Net trainer for the demo and the end-to-end test: minutes on a CPU, not days.

nnU-Net finds it through ``nnUNet_extTrainer`` (set by iterseg to this folder), for training
and prediction. Production runs use nnU-Net's own ``nnUNetTrainer``.
"""

from __future__ import annotations

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainerIterSegDemo(nnUNetTrainer):
    """12 epochs x 8 iterations with AdamW (lr 3e-3), 2 validation iterations, no mirroring.

    nnU-Net's SGD (momentum 0.99, lr 0.01) needs thousands of iterations; in the demo's 100
    it learns the liver and never the tumour (test Dice 0.0 at every iteration). AdamW's
    per-weight step sizes find the small, dark tumour within about 50 iterations on the
    demo's phantoms (measured for issue 16). Short epochs keep the tests that train one or two
    epochs quick; the demo's config asks for the epochs it needs.
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
        self.num_epochs = 12
        self.num_iterations_per_epoch = 8
        self.num_val_iterations_per_epoch = 2
        self.initial_lr = 3e-3
        self.save_every = 1  # a checkpoint per epoch: an interrupted fold continues from there

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        """AdamW with nnU-Net's weight decay and its polynomial learning-rate decay over the epochs."""
        optimizer = torch.optim.AdamW(
            self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay
        )
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):  # type: ignore[no-untyped-def] # noqa: N802
        """Keep nnU-Net's augmentation but switch mirroring off for training and inference."""
        rotation, dummy_2d, initial_patch_size, _ = (
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        )
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, None
