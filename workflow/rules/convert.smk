"""Stage convert (iterseg convert, iterseg assemble -> workflow/iterseg/convert/).

Consumes: a dated rawdata snapshot (read only), the dataset's ROI YAML, and the earlier snapshots'
  converted/cases.json (pairs unchanged since are reused, not converted again).
Produces: procdata/.../converted/ (NIfTI cases checked against their DICOM, cases.json,
  skipped.json, excluded.json, check.json) and the iteration's nnU-Net raw dataset (assembled.json).
Reads earlier iterations: the first iteration's assembled.json (its frozen test set) and the
  previous one's (what changed since).
"""


rule convert_snapshot:
    input:
        snapshot=ITERATIONS.snapshot_dir,
        roi=PARAMS.roi_yaml,
        earlier=ITERATIONS.earlier_conversions,
    output:
        cases=paths.CASES,
    log:
        paths.log("convert_snapshot"),
    benchmark:
        paths.benchmark("convert_snapshot")
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        out=paths.CONVERTED,
        modality=PARAMS.modality,
        strategy=PARAMS.mask_saving_strategy,
        unrefined=PARAMS.unrefined_arg,
        duplicates=PARAMS.duplicate_rule,
        on_bad_case=ON_BAD_CASE,
        channels=PARAMS.channels_arg,
    shell:
        "iterseg --log {log:q} convert --snapshot {input.snapshot:q} --out {params.out:q}"
        " --roi-yaml {input.roi:q} --modality {params.modality:q} {params.channels}"
        " --mask-saving-strategy {params.strategy:q} {params.unrefined}"
        " --duplicate-annotations {params.duplicates:q} --reuse-from {input.earlier:q}"
        " --on-bad-case {params.on_bad_case:q} --jobs {threads}"


rule convert_assemble:
    input:
        converted=ITERATIONS.training_conversions,
        roi=PARAMS.roi_yaml,
        first=ITERATIONS.first_assembled,
        previous=ITERATIONS.previous_assembled,
    output:
        record=paths.ASSEMBLED,
    log:
        paths.log("convert_assemble"),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    params:
        work=ITERATIONS.work_dir,
        name=PARAMS.nnunet_name,
        converted=ITERATIONS.training_folders,
        modality=PARAMS.modality,
        missing_roi=PARAMS.missing_roi,
        test_set=PARAMS.test_set_args,
        previous=PARAMS.previous_assembled_arg,
        channels=PARAMS.channels_arg,
    shell:
        "iterseg --log {log:q} assemble --work {params.work:q} --dataset-name {params.name:q}"
        " --converted {params.converted:q} --roi-yaml {input.roi:q}"
        " --modality {params.modality:q} {params.channels} --missing-roi {params.missing_roi:q}"
        " {params.test_set} {params.previous} --output {output.record:q}"


# Stop after conversion: `snakemake convert_all`. (`--until convert_assemble` cannot: every
# iteration's assembly needs the first one's frozen test set, and Snakemake's --until stops at
# the first assembly job it reaches, then reports "BUG: Out of jobs ready to be started".)
rule convert_all:
    input:
        ITERATIONS.all_assembled,
