"""Predict: the iteration's fold ensemble on every inbox case -> label NIfTI + DICOM-SEG (highdicom).

Staged in procdata and published into data/results/{dataset}/{date}/ (labels/, seg/,
predictions.json, skipped_predictions.json) once every case is done, each by rename. The rule's
output is the record in procdata: Snakemake deletes it, not the published files, before a forced
re-run, so `latest` always holds a complete set. Consumers depend on the record and read
predictions.json.
"""


rule predict_inbox:
    input:
        plan="data/procdata/{dataset}/{date}__{dataset}/planned.json",
        folds=fold_records,
        roi=roi_yaml,
    output:
        record="data/procdata/{dataset}/{date}__{dataset}/predicted.json",
    log:
        "data/results/{dataset}/{date}/logs/predict_inbox.log",
    benchmark:
        "data/results/{dataset}/{date}/benchmarks/predict_inbox.tsv"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=STEP_GPUS,
    params:
        work=work_dir,
        trainer=trainer,
        folds=NN.folds,
        device=NN.device,
        gpus=GPU_ARGS,
        inbox=inbox_dir,
        modality=modality,
        out=results_dir,
        description="iterseg {dataset} {date}",
        on_bad_case=ON_BAD_CASE,
    shell:
        "iterseg --log {log:q} predict --work {params.work:q} --plan-record {input.plan:q}"
        " --trainer {params.trainer:q} --folds {params.folds:q} --device {params.device:q} {params.gpus}"
        " --inbox {params.inbox:q} --modality {params.modality:q} --out {params.out:q}"
        " --description {params.description:q} --roi-yaml {input.roi:q} --on-bad-case {params.on_bad_case:q}"
        " --output {output.record:q}"
