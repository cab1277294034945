rule data:
    input:
        code=code_digest("data"),
        spec_changed=spec_changed("data"),
    output:
        directory(DATA),
    params:
        spec=stage_params("data"),  # rerun trigger
    log:
        log_file("data"),
    threads: rule_threads("data")
    resources:
        **rule_resources("data"),
    shell:
        "{PY} -m bcd data {PARAMS} > {log} 2>&1"


# One more data stage per key of the params' `datasets` that a built stage uses (several
# datasets in one matrix, e.g. params/paper.yaml): data-<key> -> {paths.data}/<key>.
rule dataset:
    input:
        code=code_digest("data"),
        spec_changed=spec_changed("data"),
    output:
        directory(dataset_dir()),
    params:
        spec=stage_params("data"),  # rerun trigger
    log:
        log_file("data", "{dataset}"),
    threads: rule_threads("data")
    resources:
        **rule_resources("data"),
    shell:
        "{PY} -m bcd data {PARAMS} --dataset {wildcards.dataset} > {log} 2>&1"
