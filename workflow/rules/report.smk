"""Report: QC pictures and the refine-next worklist per iteration; curves and tables per dataset.

`snakemake --report report.html` gathers every output marked report() here and in evaluate.smk.
"""


rule report_qc:
    input:
        predicted="data/procdata/{dataset}/{date}__{dataset}/predicted.json",
        metrics="data/results/{dataset}/{date}/test_metrics.json",
        assembled="data/procdata/{dataset}/{date}__{dataset}/assembled.json",
        roi=roi_yaml,
    output:
        qc=report(
            directory("data/results/{dataset}/{date}/qc"),
            patterns=["{name}.png"],
            caption="../report/qc.rst",
            category="QC overlays",
            subcategory="{date}",
        ),
    log:
        "data/results/{dataset}/{date}/logs/report_qc.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        results=results_dir,
        inbox=inbox_dir,
        modality=modality,
    shell:
        "iterseg --log {log:q} qc --results {params.results:q} --inbox {params.inbox:q} --assembled {input.assembled:q}"
        " --roi-yaml {input.roi:q} --modality {params.modality:q} --out {output.qc:q}"


rule report_worklist:
    input:
        predicted="data/procdata/{dataset}/{date}__{dataset}/predicted.json",
        assembled="data/procdata/{dataset}/{date}__{dataset}/assembled.json",
    output:
        csv=report(
            "data/results/{dataset}/{date}/worklist.csv",
            caption="../report/worklist.rst",
            category="Refine next",
            subcategory="{date}",
        ),
    log:
        "data/results/{dataset}/{date}/logs/report_worklist.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        predictions=predictions_json,
    shell:
        "iterseg --log {log:q} worklist --predictions {params.predictions:q} --assembled {input.assembled:q}"
        " --out {output.csv:q}"


rule report_dataset:
    input:
        iterations=dataset_iterations,
    output:
        curves=report(
            "data/results/{dataset}/report/learning_curves.png",
            caption="../report/learning_curves.rst",
            category="Learning curves",
        ),
        effort=report(
            "data/results/{dataset}/report/annotation_effort.png",
            caption="../report/effort_curves.rst",
            category="Annotation effort",
        ),
        table=report(
            "data/results/{dataset}/report/iterations.html",
            caption="../report/iterations.rst",
            category="Iterations",
        ),
        effort_table=report(
            "data/results/{dataset}/report/annotation_effort.html",
            caption="../report/effort_table.rst",
            category="Annotation effort",
        ),
        training=report(
            directory("data/results/{dataset}/report/training"),
            patterns=["{name}.png"],
            caption="../report/training.rst",
            category="Training curves",
        ),
        csv="data/results/{dataset}/report/iterations.csv",
    log:
        "data/results/{dataset}/logs/report_dataset.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        results=dataset_results_dir,
        out="data/results/{dataset}/report",
        dates=iteration_dates,
    shell:
        "iterseg --log {log:q} report --results {params.results:q} --iterations {params.dates:q} --out {params.out:q}"
