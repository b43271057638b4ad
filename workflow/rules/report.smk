"""Stage report (iterseg qc, iterseg worklist, iterseg report -> workflow/iterseg/report/).

Consumes: an iteration's published predictions (predicted.json, predictions.json), its
  assembled.json and test metrics; for the dataset report, every iteration.json of the dataset.
Produces: results/<dataset>/<date>/qc/ (QC montages) and worklist.csv (which predictions to refine
  next); results/<dataset>/report/ (learning, effort and training curves; iteration tables).
Reads earlier iterations: the dataset report reads all of them.
`snakemake --report report.html` gathers every output marked report() here and in evaluate.smk.
"""


rule report_qc:
    input:
        predicted=paths.PREDICTED,
        metrics=paths.TEST_METRICS,
        assembled=paths.ASSEMBLED,
        roi=PARAMS.roi_yaml,
    output:
        qc=report(
            directory(paths.QC),
            patterns=["{name}.png"],
            caption="../report/qc.rst",
            category="QC overlays",
            subcategory="{date}",
        ),
    log:
        paths.log("report_qc"),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        results=ITERATIONS.results_dir,
        inbox=PARAMS.inbox_dir,
        modality=PARAMS.modality,
        channels=PARAMS.channels_arg,
    shell:
        "iterseg --log {log:q} qc --results {params.results:q} --inbox {params.inbox:q} --assembled {input.assembled:q}"
        " --roi-yaml {input.roi:q} --modality {params.modality:q} {params.channels} --out {output.qc:q}"


rule report_worklist:
    input:
        predicted=paths.PREDICTED,
        assembled=paths.ASSEMBLED,
    output:
        csv=report(
            paths.WORKLIST,
            caption="../report/worklist.rst",
            category="Refine next",
            subcategory="{date}",
        ),
    log:
        paths.log("report_worklist"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        predictions=paths.PREDICTIONS,
    shell:
        "iterseg --log {log:q} worklist --predictions {params.predictions:q} --assembled {input.assembled:q}"
        " --out {output.csv:q}"


rule report_dataset:
    input:
        iterations=ITERATIONS.dataset_iterations,
    output:
        curves=report(
            paths.report("learning_curves.png"),
            caption="../report/learning_curves.rst",
            category="Learning curves",
        ),
        effort=report(
            paths.report("annotation_effort.png"),
            caption="../report/effort_curves.rst",
            category="Annotation effort",
        ),
        table=report(
            paths.report("iterations.html"),
            caption="../report/iterations.rst",
            category="Iterations",
        ),
        effort_table=report(
            paths.report("annotation_effort.html"),
            caption="../report/effort_table.rst",
            category="Annotation effort",
        ),
        training=report(
            directory(paths.report("training")),
            patterns=["{name}.png"],
            caption="../report/training.rst",
            category="Training curves",
        ),
        csv=paths.report("iterations.csv"),
    log:
        paths.dataset_log("report_dataset"),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        results=ITERATIONS.dataset_results_dir,
        out=paths.REPORT,
        dates=ITERATIONS.dataset_dates,
    shell:
        "iterseg --log {log:q} report --results {params.results:q} --iterations {params.dates:q} --out {params.out:q}"
