"""Each fold predicts an inbox image once, and gives exactly nnU-Net's own ensemble and each fold's labels.

Two folds of the demo's planned network, with different random weights (their outputs differ
everywhere, which exposes any mix-up of folds, of the mean, or of the softmax), saved as
nnU-Net checkpoints and loaded through nnU-Net's own predictor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from iterseg.dicom.series import find_image_series, read_volume
from iterseg.nnunet.ensemble import load_ensemble, predict_folds
from nnunet_models import random_fold_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FIRST = "2026-01-15"
NAME = "Dataset901_demo_20260115"


def test_one_pass_per_fold_equals_nnunets_ensemble_and_each_fold(planned_demo: Path, tmp_path: Path) -> None:
    pre = planned_demo / f"data/procdata/demo/{FIRST}__demo/nnUNet_preprocessed/{NAME}"
    model = random_fold_model(pre, tmp_path, (0, 1))
    (series,) = find_image_series(planned_demo / "data/rawdata/demo/inbox/P101", "CT")
    array, geometry = read_volume(series)
    volume, props = array[None].astype(np.float32), {"spacing": list(geometry["spacing"])[::-1]}
    ensemble = load_ensemble(model, ("0", "1"), "cpu")
    ours = predict_folds(ensemble, volume, props)
    seg, probabilities = ensemble.predict_single_npy_array(volume, props, None, None, True)
    assert np.array_equal(ours.segmentation, seg)
    assert np.allclose(ours.probabilities, probabilities, atol=1e-6)
    assert len(ensemble.list_of_parameters) == 2  # the predictor is left as it was
    for fold, labels in zip(("0", "1"), ours.fold_segmentations, strict=True):
        alone = load_ensemble(model, (fold,), "cpu")
        assert np.array_equal(labels, alone.predict_single_npy_array(volume, props, None, None, False))
    assert not np.array_equal(*ours.fold_segmentations)  # two different folds: the test can tell them apart
    single = predict_folds(load_ensemble(model, ("0",), "cpu"), volume, props)
    assert single.fold_segmentations == () and np.array_equal(single.segmentation, ours.fold_segmentations[0])
