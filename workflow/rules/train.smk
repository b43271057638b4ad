"""Stage train (iterseg train -> workflow/iterseg/nnunet/train.py).

Consumes: the iteration's planned.json (and the preprocessed data it names).
Produces: one job per fold: nnUNet_results/.../fold_N/ and trained/fold_N.json.
Reads earlier iterations: every iteration after the first fine-tunes the previous iteration's
  same fold (its trained/fold_N.json names the checkpoint).
"""


rule train_fold:
    input:
        plan=paths.PLANNED,
        previous=ITERATIONS.previous_fold,
    output:
        record=paths.FOLD,
    log:
        paths.log("train_fold_{fold}"),
    benchmark:
        paths.benchmark("train_fold_{fold}")
    threads: 2
    resources:
        mem_mb=NN.train_mem_mb,
        runtime=NN.train_runtime,
        gpu=TRAIN_GPUS,
        cpu_training=CPU_TRAINING,
    params:
        work=ITERATIONS.work_dir,
        trainer=PARAMS.trainer,
        schedule=PARAMS.schedule_args,
        device=NN.device,
        gpus=GPU_ARGS,
        num_gpus=NUM_GPUS_ARG,
        pretrained=PARAMS.pretrained_arg,
    shell:
        "iterseg --log {log:q} train --work {params.work:q} --plan-record {input.plan:q}"
        " --trainer {params.trainer:q} --fold {wildcards.fold:q} --device {params.device:q} {params.gpus} {params.num_gpus}"
        " --threads {threads} {params.pretrained} {params.schedule} --output {output.record:q}"
