"""The fold ensemble of a trained iteration, loaded as an nnU-Net predictor: one place builds it.

The inbox prediction (``iterseg predict``) and the test-set evaluation (``iterseg evaluate``)
load the same model the same way, so their predictions of one image are the same.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the config imports this module: no numpy at start-up
    import numpy as np

logger = logging.getLogger(__name__)

#: nnU-Net's own defaults, named here so that both callers visibly use the same values.
TILE_STEP_SIZE = 0.5
USE_GAUSSIAN = True
USE_MIRRORING = True
CHECKPOINT_NAME = "checkpoint_final.pth"


@dataclass(frozen=True)
class Inference:
    """nnU-Net's sliding-window settings (``nnunet.inference`` in the config); its defaults."""

    tile_step_size: float = TILE_STEP_SIZE
    use_mirroring: bool = USE_MIRRORING


DEFAULT_INFERENCE = Inference()


def nnunet_folds(folds: Sequence[str]) -> tuple[int | str, ...]:
    """Our fold names (``"0"`` ... ``"4"``, ``"all"``) as nnU-Net's ``use_folds`` takes them."""
    return tuple(f if f == "all" else int(f) for f in folds)


def load_ensemble(
    model_folder: Path,
    folds: Sequence[str],
    device: str,
    *,
    inference: Inference = DEFAULT_INFERENCE,
    use_gaussian: bool = USE_GAUSSIAN,
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
    inference
        Tile step size and test-time mirroring (default nnU-Net's).
    use_gaussian
        Gaussian weighting of the tiles (nnU-Net's default).
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
        tile_step_size=inference.tile_step_size,
        use_gaussian=use_gaussian,
        use_mirroring=inference.use_mirroring,
        perform_everything_on_device=device != "cpu",
        device=torch.device(device),
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(
        str(model_folder), use_folds=nnunet_folds(folds), checkpoint_name=checkpoint_name
    )
    logger.debug("loaded folds %s of %s on %s", ",".join(folds), model_folder, device)
    return predictor


@dataclass(frozen=True)
class FoldPrediction:
    """One image predicted by every fold once: the ensemble's labels and probabilities, each fold's labels."""

    segmentation: np.ndarray  # the ensemble's labels, on the input image's grid
    probabilities: np.ndarray  # (classes, *image) softmax of the ensemble
    fold_segmentations: tuple[np.ndarray, ...]  # each fold alone (empty for a single fold)


def predict_folds(predictor: Any, volume: np.ndarray, properties: dict[str, Any]) -> FoldPrediction:
    """Predict ``volume`` with each fold of ``predictor`` once; the ensemble and the folds' own labels.

    nnU-Net's ensemble is the mean of the folds' logits (``predict_logits_from_preprocessed_data``
    sums them in fold order and divides). Running that ensemble and then every fold again for
    their disagreement costs twice the sliding windows: here the image is preprocessed once,
    each fold's logits are computed once, converted to that fold's labels and added to the
    running sum, whose mean gives the ensemble's labels and probabilities, the same numbers
    nnU-Net's own ensemble gives.

    Parameters
    ----------
    predictor
        The ``nnUNetPredictor`` of :func:`load_ensemble`, with one or more folds.
    volume, properties
        As nnU-Net's ``predict_single_npy_array`` takes them: (channels, z, y, x) and ``{"spacing": ...}``.

    """
    import numpy as np
    from nnunetv2.inference.data_iterators import PreprocessAdapterFromNpy
    from nnunetv2.inference.export_prediction import (
        convert_predicted_logits_to_segmentation_with_correct_shape,
    )

    def labels_of(logits: Any, probabilities: bool) -> Any:
        return convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, predictor.plans_manager, predictor.configuration_manager, predictor.label_manager,
            case["data_properties"], return_probabilities=probabilities,
        )  # fmt: skip

    case = next(
        PreprocessAdapterFromNpy(
            [volume], [None], [properties], [None], predictor.plans_manager, predictor.dataset_json,
            predictor.configuration_manager, num_threads_in_multithreaded=1, verbose=False,
        )
    )  # fmt: skip
    every_fold = predictor.list_of_parameters
    total: Any = None
    folds: list[np.ndarray] = []
    try:
        for parameters in every_fold:
            predictor.list_of_parameters = [parameters]  # nnU-Net's own loop, over this fold alone
            logits = predictor.predict_logits_from_preprocessed_data(case["data"]).cpu()
            if len(every_fold) > 1:
                folds.append(np.asarray(labels_of(logits, False)))
            total = logits if total is None else total + logits
    finally:
        predictor.list_of_parameters = every_fold
    if len(every_fold) > 1:
        total /= len(every_fold)
    segmentation, probabilities = labels_of(total, True)
    return FoldPrediction(np.asarray(segmentation), np.asarray(probabilities), tuple(folds))
