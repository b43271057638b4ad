"""Plan: fingerprint + plan + preprocess the first iteration; later iterations transfer its plans."""


rule plan_preprocess:
    input:
        assembled=WORK + "/assembled.json",
        source=plans_source,
    output:
        record=WORK + "/planned.json",
    log:
        LOGS + "/plan_preprocess.log",
    benchmark:
        ITER_RESULTS + "/benchmarks/plan_preprocess.tsv"
    threads: NN.preprocess_processes
    resources:
        mem_mb=16000,
        runtime=240,
    params:
        work=WORK,
        name=nnunet_name,
        configuration=NN.configuration,
        plans=NN.plans,
        source=plans_source_arg,
    shell:
        "iterseg plan --work {params.work:q} --dataset-name {params.name:q}"
        " --configuration {params.configuration:q} --plans {params.plans:q}"
        " --processes {threads} {params.source} --output {output.record:q} > {log:q} 2>&1"
