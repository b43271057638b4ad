# iterseg: annotated DICOM snapshots -> checked NIfTI -> nnU-Net (fine-tuned per iteration)
# -> DICOM-SEG -> data/results/<dataset>/latest. See README.md; settings in config/.
# Each stage: workflow/rules/<stage>.smk -> an `iterseg` command -> workflow/iterseg/<package>/.


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/convert.smk"
include: "workflow/rules/plan.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/results.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/pacs.smk"


rule all:
    default_target: True
    input:
        ITERATIONS.all_iterations,
        ITERATIONS.report_targets,
        PACS_PUSHES,


# At the end of every run, one warning line per case an iteration skipped (on_bad_case: skip).
onsuccess:
    warn_run(SNAPSHOTS, logger)


onerror:
    warn_run(SNAPSHOTS, logger)
