"""Benchmark: inbox prediction with each fold once vs the ensemble plus every fold again, same run.

Until 2026-12 the predict step ran nnU-Net's fold ensemble for the exported labels and then every
fold again for the folds' disagreement (the worklist's signal): twice the sliding windows with
two or more folds. ``iterseg.nnunet.ensemble.predict_folds`` preprocesses once and runs each
fold once, giving the same ensemble (tests/integration/test_fold_prediction.py checks it is
identical). Both are timed here on the demo's inbox CTs with the demo's planned network (random
weights per fold: inference costs the same whatever they are), for 2 and 5 folds; the labels of
both ways must be equal. Prints medians over the cases and the ratio (goal: <= 0.55).

    .venv/bin/python benchmarks/predict_folds.py [--folds 2 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from nnunet_models import random_fold_model  # noqa: E402 - the tests' helper, after the path

BIN = Path(sys.executable).parent
FIRST = "2026-01-15"
NAME = "Dataset901_demo_20260115"


def planned_demo(root: Path) -> Path:
    """The demo's first iteration planned and preprocessed (snakemake, as a user runs it)."""
    project = root / "project"
    shutil.copytree(REPO / "config", project / "config")
    subprocess.run([str(BIN / "iterseg"), "-q", "demo-data", str(project / "data/rawdata/demo")], check=True)
    target = f"data/procdata/demo/{FIRST}__demo/planned.json"
    subprocess.run(
        [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(project),
         target, "--cores", "2", "--quiet", "rules", "--configfile", str(project / "config/demo.yaml")],
        check=True, cwd=project, env={k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")},
    )  # fmt: skip
    return project


def before(ensemble: object, per_fold: list[object], volume: np.ndarray, props: dict) -> np.ndarray:
    """What the predict step did: the ensemble, then each fold again."""
    seg, _ = ensemble.predict_single_npy_array(volume, props, None, None, True)  # type: ignore[attr-defined]
    for predictor in per_fold:
        predictor.predict_single_npy_array(volume, props, None, None, False)  # type: ignore[attr-defined]
    return np.asarray(seg)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--folds", type=int, nargs="+", default=[2, 5])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    from iterseg.dicom.series import find_image_series, read_volume
    from iterseg.nnunet.ensemble import load_ensemble, predict_folds

    with tempfile.TemporaryDirectory() as tmp:
        project = planned_demo(Path(tmp))
        pre = project / f"data/procdata/demo/{FIRST}__demo/nnUNet_preprocessed/{NAME}"
        cases = []
        for folder in sorted((project / "data/rawdata/demo/inbox").iterdir()):
            (series,) = find_image_series(folder, "CT")
            array, geometry = read_volume(series)
            cases.append((array[None].astype(np.float32), {"spacing": list(geometry["spacing"])[::-1]}))
        shape = cases[0][0].shape[1:]
        print(f"{len(cases)} inbox cases of {shape} voxels; {os.cpu_count()} CPUs; device {args.device}")
        print(f"load average before: {os.getloadavg()[0]:.2f}")
        print(f"{'folds':>5} {'before s':>9} {'one pass s':>10} {'ratio':>6}")
        for n in args.folds:
            model = random_fold_model(pre, Path(tmp) / f"folds{n}", range(n))
            names = tuple(str(f) for f in range(n))
            ensemble = load_ensemble(model, names, args.device)
            per_fold = [load_ensemble(model, (f,), args.device) for f in names]
            old, new = [], []
            for volume, props in cases:
                start = time.perf_counter()
                expected = before(ensemble, per_fold, volume, props)
                old.append(time.perf_counter() - start)
                start = time.perf_counter()
                got = predict_folds(ensemble, volume, props).segmentation
                new.append(time.perf_counter() - start)
                assert np.array_equal(got, expected), "the one-pass ensemble differs from nnU-Net's"
            a, b = statistics.median(old), statistics.median(new)
            print(f"{n:>5} {a:>9.2f} {b:>10.2f} {b / a:>6.2f}")
        print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
