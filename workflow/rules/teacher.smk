rule teacher:
    input:
        data=teacher_data,
        code=code_digest("teacher"),
        spec_changed=spec_changed("teacher"),
    output:
        model=teacher_file("model"),
        train_log=teacher_file("train_log"),
    params:
        spec=stage_params("teacher"),  # rerun trigger
    log:
        log_file("teacher", "{teacher}"),
    threads: rule_threads("teacher")
    priority: 10  # the critical path: every distillation run waits for its teacher
    resources:
        **rule_resources("teacher"),
    shell:
        "{PY} -m bcd teacher {PARAMS} --teacher {wildcards.teacher} > {log} 2>&1"
