# The figures (bcd/figures.py), when the params have a `figures` section: the qualitative grid,
# the boundary figure, the training curves, the ablation chart and the curve exports of dvc plots.
# (No rule when its runs cannot be derived from the table: bcd.params.figures_spec.)
if FIGURES:

    rule figures:
        input:
            data=FIGURES_IN["data"],
            weights=FIGURES_IN["weights"],
            metrics=FIGURES_IN["metrics"],
            train_logs=FIGURES_IN["train_logs"],
            table=FIGURES_IN["table"],
            code=code_digest("figures"),
            spec_changed=spec_changed("figures"),
        output:
            # update(): the previous figures stay until the new ones are written (tables.smk)
            png=[update(report(f, category="Figures")) for f in figure_files("png")],
            other=[update(f) for f in P.figures_outputs(CFG) if f not in figure_files("png")],
        params:
            spec=stage_params("figures"),  # rerun trigger
        log:
            log_file("figures"),
        threads: rule_threads("figures")
        resources:
            **rule_resources("figures"),
        shell:
            "{PY} -m bcd figures {PARAMS} > {log} 2>&1"
