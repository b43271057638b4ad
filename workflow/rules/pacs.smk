"""Stage pacs (iterseg pacs push -> workflow/iterseg/pacs/), for datasets with a `pacs:` entry.

Consumes: the iteration's iteration.json (nothing is pushed unless it was promoted) and the
  predictions it published (predicted.json, predictions.json, seg/).
Produces: results/<dataset>/<date>/pacs_pushed.json: which predicted SEGs are on the PACS (STOW-RS),
  in which transfer syntax. SEGs the PACS already holds are not sent again; a PACS that is down
  or refuses them fails this rule only (the iteration stays promoted) and the next run retries.
Reads earlier iterations: none. Pulling from the PACS is `iterseg pacs pull`, run by people: it
  writes a new snapshot under rawdata, which the workflow never writes.
The push runs where snakemake runs (localrules): that machine reaches the PACS, and it holds the
  credentials' environment variables.
"""


localrules:
    pacs_push,


rule pacs_push:
    input:
        iteration=paths.ITERATION,
        predicted=paths.PREDICTED,
    output:
        record=paths.PACS_PUSHED,
    log:
        paths.log("pacs_push"),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    params:
        config=PARAMS.config_json,
        predictions=paths.PREDICTIONS,
    shell:
        "iterseg --log {log:q} pacs push --dataset {wildcards.dataset:q} --config-json {params.config:q}"
        " --iteration {input.iteration:q} --predictions {params.predictions:q} --output {output.record:q}"
