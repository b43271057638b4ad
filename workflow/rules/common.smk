"""Start-up: validate the config, find every dataset's snapshots once, check them, set the flags.

Paths come from `iterseg.paths` (templates, and which earlier iteration each step reads, as
`ITERATIONS.*` input functions); per-dataset settings and option strings from
`iterseg.rule_params` (`PARAMS.*`). Both are unit-tested in tests/unit/.
"""

import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

from iterseg import paths
from iterseg.config import check_roi_yamls, load_settings
from iterseg.errors import IterSegError
from iterseg.cluster.gpus import detect_gpus
from iterseg.rawdata.discovery import discover_snapshots
from iterseg.rawdata.fingerprint import check_converted_snapshots
from iterseg.pacs.settings import unset_credentials
from iterseg.rule_params import Params
from iterseg.skipped import warn_run  # the Snakefile's onsuccess/onerror: skipped cases on the terminal

try:
    SETTINGS = load_settings(config)
    check_roi_yamls(SETTINGS)
    SNAPSHOTS = {
        name: discover_snapshots(SETTINGS.rawdata, name, SETTINGS.inbox) for name in SETTINGS.datasets
    }
    # Snakemake cannot see an edit inside a converted snapshot (mtime kept): compare its record.
    check_converted_snapshots([s for snaps in SNAPSHOTS.values() for s in snaps], Path(paths.PROCDATA))
except IterSegError as exc:
    raise WorkflowError(str(exc)) from None

# Jobs call the `iterseg` of the environment snakemake runs in, activated or not.
shell.prefix(f'export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"; ')

NN = SETTINGS.nnunet
ITERATIONS = paths.Iterations(SNAPSHOTS, NN.train_on)
PARAMS = Params(SETTINGS, SNAPSHOTS)
ON_BAD_CASE = SETTINGS.on_bad_case  # skip | fail: what one unreadable case does to its step
MAX_DICE_DROP = "none" if SETTINGS.max_dice_drop is None else str(SETTINGS.max_dice_drop)
TRAIN_GPUS = NN.gpus_per_fold if NN.device == "cuda" else 0
STEP_GPUS = 1 if NN.device == "cuda" else 0  # prediction and evaluation: one GPU each
# On a CPU-only machine the folds share its cores: one at a time (the default profile limits
# cpu_training to 1; a cluster profile does not, each job has its own node's cores).
CPU_TRAINING = 0 if NN.device == "cuda" else 1
NUM_GPUS_ARG = f"--num-gpus {NN.gpus_per_fold}" if TRAIN_GPUS > 1 else ""
# Jobs claim one of these GPUs each (iterseg.cluster.gpus); none (CPU, or a SLURM login node) -> no claim.
GPUS = (NN.gpus if NN.gpus is not None else tuple(detect_gpus())) if NN.device == "cuda" else ()
GPU_ARGS = f"--gpus {' '.join(GPUS)} --gpu-lock-dir {shlex.quote(str(NN.gpu_lock_dir))}" if GPUS else ""
FOLD_RECORDS = paths.fold_records(NN.folds)
# datasets with a PACS push each promoted iteration's SEGs there (workflow/rules/pacs.smk)
PACS_PUSHES = paths.pacs_pushes(SNAPSHOTS, [n for n, ds in SETTINGS.datasets.items() if ds.pacs is not None])

if not SETTINGS.datasets:
    logger.warning(
        "No datasets in the config: add one under `datasets:` in config/config.yaml "
        "(or run the demo: snakemake --configfile config/demo.yaml)."
    )
for _name, _snaps in SNAPSHOTS.items():
    if not _snaps:
        logger.warning(f"dataset {_name}: no snapshots under {SETTINGS.rawdata}/{_name}/ yet")
    _pacs = SETTINGS.datasets[_name].pacs
    if _pacs is not None and _pacs.push.enabled and unset_credentials(_pacs):
        logger.warning(
            f"dataset {_name}: {', '.join(unset_credentials(_pacs))} not set: pushing the predicted "
            "SEGs to the PACS (pacs_push) will fail; export them before running snakemake."
        )


wildcard_constraints:
    dataset="[A-Za-z][A-Za-z0-9-]*",
    date=r"\d{4}-\d{2}-\d{2}",
    fold="[0-4]|all",
