"""Plan: fingerprint + plan + preprocess the first iteration; later iterations transfer its plans."""


rule plan_preprocess:
    input:
        assembled="data/procdata/{dataset}/{date}__{dataset}/assembled.json",
        source=plans_source,
    output:
        record="data/procdata/{dataset}/{date}__{dataset}/planned.json",
    log:
        "data/results/{dataset}/{date}/logs/plan_preprocess.log",
    benchmark:
        "data/results/{dataset}/{date}/benchmarks/plan_preprocess.tsv"
    threads: NN.preprocess_processes
    resources:
        mem_mb=16000,
        runtime=240,
    params:
        work=work_dir,
        name=nnunet_name,
        configuration=NN.configuration,
        plans=NN.plans,
        source=plans_source_arg,
        overrides=plans_overrides_arg,
    shell:
        "iterseg --log {log:q} plan --work {params.work:q} --dataset-name {params.name:q}"
        " --configuration {params.configuration:q} --plans {params.plans:q}"
        " --processes {threads} {params.source} {params.overrides} --output {output.record:q}"
