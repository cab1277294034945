rule train:
    input:
        data=run_data,
        teacher=teacher_model,  # only for distillation runs
        code=code_digest("train"),
        spec_changed=spec_changed("train"),
    output:
        model=run_file("model"),
        train_log=run_file("train_log"),
        distill_heads=run_file("distill_heads"),  # the distiller's state (empty without KD)
    params:
        spec=stage_params("train"),  # rerun trigger: only the runs that use a changed value
    log:
        log_file("train", "{run}", "{seed}"),
    threads: rule_threads("train")
    resources:
        **rule_resources("train"),
    shell:
        "{PY} -m bcd train {PARAMS} --run {wildcards.run} --seed {wildcards.seed} > {log} 2>&1"
