rule data:
    input:
        code=P.code_files(P.DATA_CODE),
    output:
        directory(DATA),
    params:
        spec=data_spec,  # rerun trigger
    log:
        log_file("data"),
    benchmark:
        benchmark_file("data")
    threads: rule_threads("data")
    resources:
        **rule_resources("data"),
    shell:
        "{PY} -m bcd data {PARAMS} > {log} 2>&1"
