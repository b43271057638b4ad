"""Results: once every fold and the predictions exist, record the iteration and move `latest` to it."""


rule results_promote:
    input:
        plan="data/procdata/{dataset}/{date}__{dataset}/planned.json",
        assembled="data/procdata/{dataset}/{date}__{dataset}/assembled.json",
        folds=fold_records,
        predictions="data/results/{dataset}/{date}/predictions.json",
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
    shell:
        "iterseg promote --results {params.results:q} --iteration {wildcards.date:q}"
        " --plan-record {input.plan:q} --assembled {input.assembled:q}"
        " --fold-records {input.folds:q}"
        " --predictions {input.predictions:q} --output {output.summary:q} > {log:q} 2>&1"
