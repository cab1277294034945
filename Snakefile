# bcd workflow: data -> teacher -> student runs x seeds -> evaluation -> tables -> figures.
# The run matrix is params/default.yaml; overlay a profile with --configfile:
#   snakemake --cores 2 [--configfile params/micro.yaml]
# Every rule runs one `python -m bcd` command; dvc.yaml runs the same commands (bcd.params.stages).
from snakemake.utils import validate


configfile: "params/default.yaml"


# Validates `config` with bcd.params (schema + cross-references; errors name the file and key).
include: "workflow/rules/common.smk"


# Snakemake's own check, with the same schema bcd.params validates with: the YAML file plus the
# parts generated from the dataset registry and the losses' declarations (no defaults in it, so
# `config` is unchanged; a table an overlay set to null is dropped first, as bcd.params does).
validate(P.without_dropped_tables(config), P.write_schema(".snakemake/bcd-schema.json"))


include: "workflow/rules/data.smk"
include: "workflow/rules/teacher.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/figures.smk"


rule all:
    default_target: True
    input:
        all_targets(),


# Table I alone (the BCD ablation): `snakemake --cores 2 ablation` (what `make reproduce` runs),
# with the figures when they draw Table I (params `figures.table`).
rule ablation:
    input:
        [str(p) for k, p in P.table_paths(CFG, "table1").items() if k in ("csv", "tex")],
        ablation_figures(),
