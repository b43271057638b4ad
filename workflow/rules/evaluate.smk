"""Evaluate: the iteration's fold ensemble on the frozen test set -> per-label Dice and surface Dice;
and the annotation effort: how much researchers changed our earlier predictions."""


rule evaluate_test:
    input:
        plan="data/procdata/{dataset}/{date}__{dataset}/planned.json",
        assembled="data/procdata/{dataset}/{date}__{dataset}/assembled.json",
        folds=fold_records,
    output:
        metrics="data/results/{dataset}/{date}/test_metrics.json",
    log:
        "data/results/{dataset}/{date}/logs/evaluate_test.log",
    benchmark:
        "data/results/{dataset}/{date}/benchmarks/evaluate_test.tsv"
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
        tolerance=nsd_tolerance,
        out=results_dir,
    shell:
        "iterseg --log {log:q} evaluate --work {params.work:q} --plan-record {input.plan:q}"
        " --trainer {params.trainer:q} --folds {params.folds:q} --device {params.device:q} {params.gpus}"
        " --assembled {input.assembled:q} --nsd-tolerance-mm {params.tolerance:q}"
        " --out {params.out:q} --output {output.metrics:q}"


rule evaluate_effort:
    input:
        assembled="data/procdata/{dataset}/{date}__{dataset}/assembled.json",
        predicted=earlier_predictions,
    output:
        json="data/results/{dataset}/{date}/annotation_effort.json",
        csv=report(
            "data/results/{dataset}/{date}/annotation_effort.csv",
            caption="../report/annotation_effort.rst",
            category="Annotation effort",
            subcategory="{date}",
        ),
    log:
        "data/results/{dataset}/{date}/logs/evaluate_effort.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        tolerance=nsd_tolerance,
        predictions=earlier_predictions_json,
    shell:
        "iterseg --log {log:q} effort --assembled {input.assembled:q} --predictions {params.predictions:q}"
        " --nsd-tolerance-mm {params.tolerance:q} --out-json {output.json:q} --out-csv {output.csv:q}"
