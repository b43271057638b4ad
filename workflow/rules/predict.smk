"""Stage predict (iterseg predict -> workflow/iterseg/nnunet/predict.py).

Consumes: the iteration's planned.json and every fold record, the dataset's inbox (read only).
Produces: label NIfTIs and DICOM-SEGs (highdicom) of every inbox case, staged in procdata and
  published into results/<dataset>/<date>/ (labels/, seg/, predictions.json,
  skipped_predictions.json) once every case is done, each by rename. The rule's output is the
  record in procdata (predicted.json): Snakemake deletes it, not the published files, before a
  forced re-run, so `latest` always holds a complete set. Consumers depend on the record and
  read predictions.json.
Reads earlier iterations: none.
"""


rule predict_inbox:
    input:
        plan=paths.PLANNED,
        folds=FOLD_RECORDS,
        roi=PARAMS.roi_yaml,
    output:
        record=paths.PREDICTED,
    log:
        paths.log("predict_inbox"),
    benchmark:
        paths.benchmark("predict_inbox")
    threads: 2
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=STEP_GPUS,
    params:
        work=ITERATIONS.work_dir,
        trainer=PARAMS.trainer,
        folds=NN.folds,
        device=NN.device,
        gpus=GPU_ARGS,
        inference=PARAMS.inference_args,
        inbox=PARAMS.inbox_dir,
        modality=PARAMS.modality,
        seg=PARAMS.seg_args,
        out=paths.RESULTS,
        description="iterseg {dataset} {date}",
        on_bad_case=ON_BAD_CASE,
        channels=PARAMS.channels_arg,
    shell:
        "iterseg --log {log:q} predict --work {params.work:q} --plan-record {input.plan:q}"
        " --trainer {params.trainer:q} --folds {params.folds:q} --device {params.device:q} {params.gpus}"
        " {params.inference}"
        " --inbox {params.inbox:q} --modality {params.modality:q} {params.channels} --out {params.out:q}"
        " --description {params.description:q} --roi-yaml {input.roi:q} {params.seg}"
        " --on-bad-case {params.on_bad_case:q}"
        " --output {output.record:q}"
