"""Stage plan (iterseg plan -> workflow/iterseg/nnunet/plan.py).

Consumes: the iteration's assembled.json (its nnU-Net raw dataset).
Produces: nnUNet_preprocessed/ (plans, preprocessed data) and planned.json.
Reads earlier iterations: later iterations transfer the first iteration's plans (its planned.json),
  so its weights fit; the first plans itself, with the configured planner and plans overrides.
"""


rule plan_preprocess:
    input:
        assembled=paths.ASSEMBLED,
        source=ITERATIONS.plans_source,
    output:
        record=paths.PLANNED,
    log:
        paths.log("plan_preprocess"),
    benchmark:
        paths.benchmark("plan_preprocess")
    threads: NN.preprocess_processes
    resources:
        mem_mb=16000,
        runtime=240,
    params:
        work=ITERATIONS.work_dir,
        name=PARAMS.nnunet_name,
        configuration=NN.configuration,
        plans=NN.plans,
        source=PARAMS.plans_source_arg,
        # --overrides and --planner in one param: a new param or shell change would re-run existing plans
        overrides=PARAMS.first_plans_args,
    shell:
        "iterseg --log {log:q} plan --work {params.work:q} --dataset-name {params.name:q}"
        " --configuration {params.configuration:q} --plans {params.plans:q}"
        " --processes {threads} {params.source} {params.overrides} --output {output.record:q}"
