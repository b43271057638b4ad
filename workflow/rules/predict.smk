"""Predict: the iteration's fold ensemble on every inbox case -> label NIfTI + DICOM-SEG (highdicom)."""


rule predict_inbox:
    input:
        plan="data/procdata/{dataset}/{date}__{dataset}/planned.json",
        folds=fold_records,
        roi=roi_yaml,
    output:
        manifest="data/results/{dataset}/{date}/predictions.json",
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
    shell:
        "iterseg --log {log:q} predict --work {params.work:q} --plan-record {input.plan:q}"
        " --trainer {params.trainer:q} --folds {params.folds:q} --device {params.device:q} {params.gpus}"
        " --inbox {params.inbox:q} --modality {params.modality:q} --out {params.out:q}"
        " --description {params.description:q} --roi-yaml {input.roi:q} --output {output.manifest:q}"
