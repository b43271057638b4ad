"""Train: one job per fold; every iteration after the first fine-tunes the previous one's fold."""


rule train_fold:
    input:
        plan="data/procdata/{dataset}/{date}__{dataset}/planned.json",
        previous=previous_fold,
    output:
        record="data/procdata/{dataset}/{date}__{dataset}/trained/fold_{fold}.json",
    log:
        "data/results/{dataset}/{date}/logs/train_fold_{fold}.log",
    benchmark:
        "data/results/{dataset}/{date}/benchmarks/train_fold_{fold}.tsv"
    threads: 2
    resources:
        mem_mb=NN.train_mem_mb,
        runtime=NN.train_runtime,
        gpu=TRAIN_GPUS,
        cpu_training=CPU_TRAINING,
    params:
        work=work_dir,
        trainer=trainer,
        schedule=schedule_args,
        device=NN.device,
        gpus=GPU_ARGS,
        num_gpus=NUM_GPUS_ARG,
        pretrained=pretrained_arg,
    shell:
        "iterseg --log {log:q} train --work {params.work:q} --plan-record {input.plan:q}"
        " --trainer {params.trainer:q} --fold {wildcards.fold:q} --device {params.device:q} {params.gpus} {params.num_gpus}"
        " --threads {threads} {params.pretrained} {params.schedule} --output {output.record:q}"
