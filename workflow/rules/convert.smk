"""Convert: a dated rawdata snapshot -> NIfTI cases (checked against their DICOM; pairs unchanged since an
earlier snapshot are reused) -> the iteration's nnU-Net raw dataset with its frozen test set."""


rule convert_snapshot:
    input:
        snapshot=snapshot_dir,
        roi=roi_yaml,
        earlier=earlier_conversions,
    output:
        cases="data/procdata/{dataset}/{date}__{dataset}/converted/cases.json",
    log:
        "data/results/{dataset}/{date}/logs/convert_snapshot.log",
    benchmark:
        "data/results/{dataset}/{date}/benchmarks/convert_snapshot.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        out="data/procdata/{dataset}/{date}__{dataset}/converted",
        modality=modality,
        strategy=mask_saving_strategy,
        unrefined=unrefined_arg,
        duplicates=duplicate_rule,
        on_bad_case=ON_BAD_CASE,
    shell:
        "iterseg --log {log:q} convert --snapshot {input.snapshot:q} --out {params.out:q}"
        " --roi-yaml {input.roi:q} --modality {params.modality:q}"
        " --mask-saving-strategy {params.strategy:q} {params.unrefined}"
        " --duplicate-annotations {params.duplicates:q} --reuse-from {input.earlier:q}"
        " --on-bad-case {params.on_bad_case:q} --jobs {threads}"


rule convert_assemble:
    input:
        converted=training_snapshots,
        roi=roi_yaml,
        first=first_assembled,
        previous=previous_assembled,
    output:
        record="data/procdata/{dataset}/{date}__{dataset}/assembled.json",
    log:
        "data/results/{dataset}/{date}/logs/convert_assemble.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    params:
        work=work_dir,
        name=nnunet_name,
        converted=converted_dirs,
        modality=modality,
        missing_roi=missing_roi,
        test_set=test_set_args,
        previous=previous_assembled_arg,
    shell:
        "iterseg --log {log:q} assemble --work {params.work:q} --dataset-name {params.name:q}"
        " --converted {params.converted:q} --roi-yaml {input.roi:q}"
        " --modality {params.modality:q} --missing-roi {params.missing_roi:q}"
        " {params.test_set} {params.previous} --output {output.record:q}"


# Stop after conversion: `snakemake convert_all`. (`--until convert_assemble` cannot: every
# iteration's assembly needs the first one's frozen test set, and Snakemake's --until stops at
# the first assembly job it reaches, then reports "BUG: Out of jobs ready to be started".)
rule convert_all:
    input:
        all_assembled,
