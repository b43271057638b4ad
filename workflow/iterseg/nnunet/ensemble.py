"""The fold ensemble of a trained iteration, loaded as an nnU-Net predictor: one place builds it.

The inbox prediction (``iterseg predict``) and the test-set evaluation (``iterseg evaluate``)
load the same model the same way, so their predictions of one image are the same.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: nnU-Net's own defaults, named here so that both callers visibly use the same values.
TILE_STEP_SIZE = 0.5
USE_GAUSSIAN = True
USE_MIRRORING = True
CHECKPOINT_NAME = "checkpoint_final.pth"


def nnunet_folds(folds: Sequence[str]) -> tuple[int | str, ...]:
    """Our fold names (``"0"`` ... ``"4"``, ``"all"``) as nnU-Net's ``use_folds`` takes them."""
    return tuple(f if f == "all" else int(f) for f in folds)


def load_ensemble(
    model_folder: Path,
    folds: Sequence[str],
    device: str,
    *,
    tile_step_size: float = TILE_STEP_SIZE,
    use_gaussian: bool = USE_GAUSSIAN,
    use_mirroring: bool = USE_MIRRORING,
    checkpoint_name: str = CHECKPOINT_NAME,
) -> Any:
    """An ``nnUNetPredictor`` holding the ensemble of ``folds`` of the model in ``model_folder``.

    nnU-Net's environment variables must already be set (:func:`iterseg.nnunet.env.configure_nnunet`).

    Parameters
    ----------
    model_folder
        nnU-Net's trained-model folder (:func:`iterseg.paths.model_dir`).
    folds
        Folds to ensemble (``"0"`` ... or ``"all"``); one fold gives that fold's model alone.
    device
        ``"cpu"``, ``"cuda"`` or ``"mps"``; on a GPU everything stays on the device.
    tile_step_size, use_gaussian, use_mirroring
        nnU-Net's sliding-window settings (its defaults).
    checkpoint_name
        The checkpoint of each fold to load.

    Returns
    -------
    nnUNetPredictor
        Initialised, without progress bars.

    """
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(
        tile_step_size=tile_step_size,
        use_gaussian=use_gaussian,
        use_mirroring=use_mirroring,
        perform_everything_on_device=device != "cpu",
        device=torch.device(device),
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(
        str(model_folder), use_folds=nnunet_folds(folds), checkpoint_name=checkpoint_name
    )
    logger.debug("loaded folds %s of %s on %s", ",".join(folds), model_folder, device)
    return predictor
