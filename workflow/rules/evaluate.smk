rule evaluate_teacher:
    input:
        data=teacher_data,
        model=teacher_file("model"),
        code=code_digest("evaluate"),
        spec_changed=spec_changed("evaluate-teacher"),
    output:
        update(teacher_file("metrics")),  # kept if the job fails (tables.smk)
        update(teacher_file("summary")),  # its headline numbers (DVC's metrics file)
    params:
        spec=stage_params("evaluate-teacher"),  # rerun trigger
    log:
        log_file("evaluate-teacher", "{teacher}"),
    threads: rule_threads("evaluate")
    resources:
        **rule_resources("evaluate"),
    shell:
        "{PY} -m bcd evaluate {PARAMS} --teacher {wildcards.teacher} > {log} 2>&1"


rule evaluate:
    input:
        data=run_data,
        model=run_file("model"),
        code=code_digest("evaluate"),
        spec_changed=spec_changed("evaluate"),
    output:
        update(run_file("metrics")),  # kept if the job fails (tables.smk)
        update(run_file("summary")),  # its headline numbers (DVC's metrics file)
    params:
        spec=stage_params("evaluate"),  # rerun trigger
    log:
        log_file("evaluate", "{run}", "{seed}"),
    threads: rule_threads("evaluate")
    resources:
        **rule_resources("evaluate"),
    shell:
        "{PY} -m bcd evaluate {PARAMS} --run {wildcards.run} --seed {wildcards.seed} > {log} 2>&1"
