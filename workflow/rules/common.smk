# Helpers shared by the rules. All knowledge of the params lives in bcd.params, which also
# generates dvc.yaml, so both tools run the same commands on the same files.
import json
import os
import re
import shlex
import sys

from bcd import codedeps
from bcd import params as P


def params_files():
    """The params files in effect, in Snakemake's merge order: the Snakefile's `configfile:`,
    then the --configfile overlays (a file given twice counts where it comes last)."""
    overlays = [str(f) for f in workflow.config_settings.configfiles]
    defaults = [str(f) for f in workflow.configfiles if str(f) not in overlays]
    ordered = {}
    for f in defaults + overlays:
        rel = os.path.relpath(f)
        ordered.pop(os.path.realpath(f), None)
        ordered[os.path.realpath(f)] = f if rel.startswith("..") else rel
    return list(ordered.values())


CFG = P.validate_config(config, params_files())

# One tool at a time: while this Snakemake runs jobs it holds DVC's repository lock
# (bcd.toollock); a Snakemake started while `dvc repro` (or another Snakemake's jobs) runs stops
# before its first job. Taken in `onstart`, which Snakemake calls only when it will run jobs: a
# dry run (-n), --summary or --list-* changes nothing and is answered beside a running tool.
onstart:
    from snakemake.exceptions import WorkflowError

    from bcd import toollock

    try:
        toollock.hold_dvc_lock(".")
    except toollock.ToolLockError as err:
        raise WorkflowError(str(err)) from None
    global WARM
    if warm_start_wanted():
        from bcd import warm

        WARM = warm.start(".snakemake/log/bcd-warm-start.log")


# Warm start (bcd.warm): the jobs of a local CPU run fork from one process that has imported
# torch and OpenMMLab once (~6.5 s saved per job); BCD_WARM_START=0 turns it off. Off on
# clusters (each job runs elsewhere) and with GPUs (a CUDA context does not survive fork).
WARM = None


def warm_start_wanted():
    return (workflow.local_exec and not workflow.dryrun
            and os.environ.get("BCD_WARM_START", "1") != "0"
            and not os.environ.get("BCD_RECORD_IMPORTS")  # the import-graph test: jobs run fresh
            and not any(P.lookup(CFG, "resources", kind)["gpus"] for kind in P.RESOURCE_KINDS))


def stop_warm_start():
    from bcd import warm

    warm.stop(WARM)


onsuccess:
    stop_warm_start()


onerror:
    stop_warm_start()


PY = shlex.quote(sys.executable)  # the interpreter running Snakemake, i.e. the project's venv
PARAMS = " ".join(f"--params {shlex.quote(f)}" for f in P.files_of(CFG))
DATA = str(P.data_dir(CFG))


def rule_threads(kind):
    """`threads:` of a kind of job (params resources.<kind>.threads)."""
    return P.rule_threads(CFG, kind)


def rule_resources(kind):
    """`resources:` of a kind of job (params resources.<kind>; bcd.params.rule_resources)."""
    return P.rule_resources(CFG, kind)


def _any_of(names):
    return "|".join(re.escape(str(n)) for n in names) or "(?!)"  # none: matches nothing


wildcard_constraints:
    dataset=_any_of(k for k in P.datasets_used(CFG) if k is not None),
    teacher=_any_of(P.teachers_used(CFG)),
    run=_any_of(CFG["runs"]),
    seed=_any_of(CFG["seeds"]),
    table=_any_of(CFG["tables"]),


def teacher_file(key):
    return str(P.teacher_paths(CFG, "{teacher}")[key])


def run_file(key):
    return str(P.run_paths(CFG, "{run}", "{seed}")[key])


def table_file(key):
    return str(P.table_paths(CFG, "{table}")[key])


def log_file(kind, *names):
    """Log file of a stage (stdout and stderr), named like its DVC stage."""
    return str(P.log_path(CFG, P.stage_name(kind, *names)))


def dataset_dir():
    """The data stage folder of a `datasets` key (the top-level `data`'s is DATA)."""
    return str(P.data_dir(CFG, "{dataset}"))


def teacher_data(wildcards):
    return str(P.data_dir(CFG, P.dataset_of(CFG, teacher=wildcards.teacher)))


def run_data(wildcards):
    return str(P.data_dir(CFG, P.dataset_of(CFG, run=wildcards.run)))


def teacher_model(wildcards):
    teacher = CFG["runs"][wildcards.run].get("teacher")
    return [str(P.teacher_paths(CFG, teacher)["model"])] if teacher else []


def table_metrics(wildcards):
    return [str(p) for p in P.table_metrics(CFG, wildcards.table)]


# Rerun triggers: everything a stage depends on, resolved by bcd.specrecord.stage_spec (the same
# settings each stage command records beside its outputs; the same key paths are the stage's
# `params:` in dvc.yaml). Canonical JSON, so reordering keys in a YAML file changes nothing.
from bcd import specrecord


def _stage(wildcards):
    """(name, seed) of a job's stage from its wildcards (None where the kind has none)."""
    name = next((getattr(wildcards, k) for k in ("dataset", "teacher", "run", "table")
                 if hasattr(wildcards, k)), None)
    return name, getattr(wildcards, "seed", None)


def stage_params(kind):
    """`params:` function of a kind of stage: its spec as canonical JSON."""
    return lambda wildcards: json.dumps(specrecord.stage_spec(CFG, kind, *_stage(wildcards)),
                                        sort_keys=True)


def code_digest(kind):
    """The one input that stands for the code a stage of ``kind`` runs (bcd.codedeps
    .write_digest, rewritten here when that code's content changed): the files themselves are
    in dvc.yaml's deps and in the digest."""
    return str(codedeps.write_digest(kind, P.code_files(getattr(P, f"{kind.upper()}_CODE"))))


def spec_changed(kind):
    """Input function: a stamp newer than the outputs when they were made (by any tool: DVC, a
    plain command, Snakemake) with other settings than the current ones (bcd.specrecord).
    Snakemake's own params trigger sees only the outputs it built itself."""
    return lambda wildcards: specrecord.stale_stamp(CFG, kind, *_stage(wildcards))


# The figures stage's files (only with a `figures` section in the params that resolves).
FIGURES = P.figures_spec(CFG)
FIGURES_IN = P.figures_inputs(CFG) if FIGURES else {}


def figure_files(fmt):
    return [str(p[fmt]) for p in P.figure_paths(CFG).values()]


def ablation_figures():
    """The figures, when they draw Table I (then `snakemake ablation` makes them too)."""
    if FIGURES and FIGURES["table"] == "table1":
        return P.figures_outputs(CFG)
    return []


def all_targets():
    """Every metrics file, every table and the figures: the whole DAG of bcd.params.stages."""
    return [f for s in P.stages(CFG) for f in (*s.metrics, *(s.outs if not s.cache else ()))]
