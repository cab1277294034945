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
    resources:
        mem_mb=1000,
    shell:
        "{PY} -m bcd data {PARAMS} > {log} 2>&1"
