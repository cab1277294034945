rule table:
    input:
        metrics=table_metrics,
        code=P.code_files(P.TABLE_CODE),
    output:
        csv=report(table_file("csv"), category="Tables"),
        tex=table_file("tex"),
    params:
        spec=table_spec,  # rerun trigger
    log:
        log_file("table", "{table}"),
    benchmark:
        benchmark_file("table", "{table}")
    threads: rule_threads("table")
    resources:
        **rule_resources("table"),
    shell:
        "{PY} -m bcd table {PARAMS} --table {wildcards.table} > {log} 2>&1"
