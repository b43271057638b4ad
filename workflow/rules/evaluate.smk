"""Evaluate: the iteration's fold ensemble on the frozen test set -> per-label Dice and surface Dice."""


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
        "iterseg evaluate --work {params.work:q} --plan-record {input.plan:q}"
        " --trainer {params.trainer:q} --folds {params.folds:q} --device {params.device:q} {params.gpus}"
        " --assembled {input.assembled:q} --nsd-tolerance-mm {params.tolerance:q}"
        " --out {params.out:q} --output {output.metrics:q} > {log:q} 2>&1"
