"""Stage evaluate (iterseg evaluate, iterseg effort -> workflow/iterseg/evaluate/).

Consumes: the iteration's planned.json, fold records and assembled.json (its frozen test set).
Produces: test_metrics.json (per-label Dice and surface Dice of the fold ensemble on the test set,
  test_predictions/) and annotation_effort.json/.csv (how much researchers changed our
  predictions before they became this iteration's annotations).
Reads earlier iterations: every earlier iteration's predictions (predicted.json, predictions.json).
"""


rule evaluate_test:
    input:
        plan=paths.PLANNED,
        assembled=paths.ASSEMBLED,
        folds=FOLD_RECORDS,
    output:
        metrics=paths.TEST_METRICS,
    log:
        paths.log("evaluate_test"),
    benchmark:
        paths.benchmark("evaluate_test")
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
        tolerance=PARAMS.nsd_tolerance,
        out=paths.RESULTS,
    shell:
        "iterseg --log {log:q} evaluate --work {params.work:q} --plan-record {input.plan:q}"
        " --trainer {params.trainer:q} --folds {params.folds:q} --device {params.device:q} {params.gpus}"
        " {params.inference}"
        " --assembled {input.assembled:q} --nsd-tolerance-mm {params.tolerance:q}"
        " --out {params.out:q} --output {output.metrics:q}"


rule evaluate_effort:
    input:
        assembled=paths.ASSEMBLED,
        predicted=ITERATIONS.earlier_predicted,
    output:
        json=paths.EFFORT_JSON,
        csv=report(
            paths.EFFORT_CSV,
            caption="../report/annotation_effort.rst",
            category="Annotation effort",
            subcategory="{date}",
        ),
    log:
        paths.log("evaluate_effort"),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        tolerance=PARAMS.nsd_tolerance,
        predictions=ITERATIONS.earlier_predictions,
    shell:
        "iterseg --log {log:q} effort --assembled {input.assembled:q} --predictions {params.predictions:q}"
        " --nsd-tolerance-mm {params.tolerance:q} --out-json {output.json:q} --out-csv {output.csv:q}"
