"""Stage results (iterseg promote -> workflow/iterseg/release/).

Consumes: every record of the iteration (planned, assembled, folds, predicted, test metrics, effort).
Produces: results/<dataset>/<date>/manifest.json and iteration.json; gates the iteration (every
  fold finished, test Dice within the allowed drop of `latest`) and moves `latest` to it if it
  passes (latest_history.jsonl records every move).
Reads earlier iterations: the previous iteration's iteration.json: iterations are promoted in
  date order, so `latest` only ever moves forward.
"""


rule results_promote:
    input:
        plan=paths.PLANNED,
        assembled=paths.ASSEMBLED,
        folds=FOLD_RECORDS,
        predicted=paths.PREDICTED,
        metrics=paths.TEST_METRICS,
        effort=paths.EFFORT_JSON,
        roi=PARAMS.roi_yaml,
        previous=ITERATIONS.previous_iteration,
    output:
        summary=paths.ITERATION,
    log:
        paths.log("results_promote"),
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        results=ITERATIONS.dataset_results_dir,
        config=PARAMS.config_json,
        max_drop=MAX_DICE_DROP,
        previous=PARAMS.previous_iteration_arg,
        predictions=paths.PREDICTIONS,
    shell:
        "iterseg --log {log:q} promote --results {params.results:q} --iteration {wildcards.date:q}"
        " --plan-record {input.plan:q} --assembled {input.assembled:q}"
        " --fold-records {input.folds:q}"
        " --predictions {params.predictions:q} --test-metrics {input.metrics:q} --effort {input.effort:q}"
        " --roi-yaml {input.roi:q} --config-json {params.config:q} --max-dice-drop {params.max_drop:q}"
        " {params.previous} --output {output.summary:q}"
