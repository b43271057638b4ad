"""Results: write the iteration's manifest, gate it (every fold finished, test Dice within the
allowed drop of `latest`) and move `latest` to it if it passes."""


rule results_promote:
    input:
        plan="data/procdata/{dataset}/{date}__{dataset}/planned.json",
        assembled="data/procdata/{dataset}/{date}__{dataset}/assembled.json",
        folds=fold_records,
        predicted="data/procdata/{dataset}/{date}__{dataset}/predicted.json",
        metrics="data/results/{dataset}/{date}/test_metrics.json",
        effort="data/results/{dataset}/{date}/annotation_effort.json",
        roi=roi_yaml,
        previous=previous_iteration,
    output:
        summary="data/results/{dataset}/{date}/iteration.json",
    log:
        "data/results/{dataset}/{date}/logs/results_promote.log",
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        results=dataset_results_dir,
        config=config_json,
        max_drop=MAX_DICE_DROP,
        previous=previous_iteration_arg,
        predictions=predictions_json,
    shell:
        "iterseg --log {log:q} promote --results {params.results:q} --iteration {wildcards.date:q}"
        " --plan-record {input.plan:q} --assembled {input.assembled:q}"
        " --fold-records {input.folds:q}"
        " --predictions {params.predictions:q} --test-metrics {input.metrics:q} --effort {input.effort:q}"
        " --roi-yaml {input.roi:q} --config-json {params.config:q} --max-dice-drop {params.max_drop:q}"
        " {params.previous} --output {output.summary:q}"
