rule table:
    input:
        metrics=table_metrics,
        code=code_digest("table"),
        spec_changed=spec_changed("table"),
    output:
        # update(): Snakemake keeps the previous table in place while the job runs and puts it
        # back if the job fails (a corrupt metrics file must not cost the last good table)
        csv=update(report(table_file("csv"), category="Tables")),
        tex=update(table_file("tex")),
    params:
        spec=stage_params("table"),  # rerun trigger
    log:
        log_file("table", "{table}"),
    threads: rule_threads("table")
    resources:
        **rule_resources("table"),
    shell:
        "{PY} -m bcd table {PARAMS} --table {wildcards.table} > {log} 2>&1"
