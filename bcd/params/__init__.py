"""The run matrix (``params/*.yaml``): loading, validation, resolution, paths and the stage list.

Everything that reads the params goes through this package: the stage commands (``python -m bcd``),
the Snakemake workflow (``workflow/rules/common.smk``) and the generated ``dvc.yaml``
(:func:`stages`). Callers use ``from bcd import params as P`` and ``P.<name>``; each name lives
in one module:

- :mod:`bcd.params.load`: reading files (duplicate keys refused), the deep merge, ``ParamsError``;
- :mod:`bcd.params.validate`: ``load_params`` / ``validate_config``, the schema and the rules it
  cannot express, every message naming the file and the key path;
- :mod:`bcd.params.resolve`: what one stage depends on (``resolve_run``, ``data_spec``, the
  run matrix, the DVC param key paths);
- :mod:`bcd.params.paths`: the files each stage reads and writes;
- :mod:`bcd.params.stages`: the stage list shared by the Snakefile and dvc.yaml, job resources;
- :mod:`bcd.params.spec`: resolve once: the immutable spec (``TrainSpec``, ``EvaluationSpec``,
  ``DataSpec``) a stage command hands to training, evaluation and the runtime checks;
- :mod:`bcd.params.check`: ``python -m bcd check-params``.

Several files are deep-merged in order, like Snakemake's ``configfile:`` plus ``--configfile``
overlays: dicts merge recursively, lists and scalars replace.

Stage names (the same in ``dvc.yaml`` and in Snakemake's log files)::

    data, data-<dataset>, teacher-<teacher>, evaluate-teacher-<teacher>, train-<run>-seed<S>,
    evaluate-<run>-seed<S>, table-<table>, figures

Several datasets in one matrix: the top-level ``data`` section is the dataset of every teacher
and run without a ``dataset`` key (stage ``data``, folder ``paths.data``); an optional
``datasets: {<key>: <a data section>}`` adds more, chosen with ``teachers.T.dataset`` /
``runs.R.dataset: <key>`` (stage ``data-<key>``, folder ``{paths.data}/<key>``). A run
distils on its teacher's dataset and a table's rows share its teacher's dataset
(:func:`dataset_of`, :func:`table_dataset`). A table lists one teacher and its rows, or
``groups`` of them (:func:`table_groups`: Table V's three detector pairs in one table).
"""
from __future__ import annotations

from bcd.params.load import (
    ParamsError, read_params_file, deep_merge, files_of, remake_command, known_names)
from bcd.params.resolve import (
    lookup, data_section, data_spec, data_keys, dataset_of, GROUP_KEYS, table_groups,
    table_rows, table_dataset,
    figures_dataset, runs_used, teachers_used, datasets_used, draws_boundary,
    FIGURES_DEFAULTS, figures_spec, resolve_teacher, resolve_run, resolve_evaluate,
    resolve_table, table_seeds, run_seeds, bpkd_methods, resolve_figures, unique,
    param_keys_for_teacher, param_keys_for_run, param_keys_for_evaluate, param_keys_for_table,
    param_keys_for_figures)
from bcd.params.paths import (
    data_dir, teacher_paths, run_paths, table_paths, FIGURE_NAMES, FIGURE_FORMATS,
    figure_paths, curve_paths, figures_runs, figures_inputs, figures_outputs, log_path)
from bcd.params.validate import (
    SCHEMA_FILE, NAME_PATTERN, RESERVED_RUN_NAMES, load_params, validate_config, keypath,
    defines, file_for, schema, write_schema, without_dropped_tables, LITE_BACKBONES,
    MIN_BASE_CHANNELS)
from bcd.params.stages import (
    RESOURCE_KINDS, rule_threads, rule_resources, Stage, stage_name, command, stages,
    table_metrics, code_files)
from bcd.params.spec import (
    Frozen, FrozenList, freeze, DataSpec, TeacherCheckpoint, EvaluationSpec, TrainSpec,
    data_job, evaluation_job, teacher_checkpoint, teacher_job, student_job)
from bcd.params.check import main_check

__all__ = ['ParamsError', 'read_params_file', 'deep_merge', 'files_of', 'remake_command',
           'known_names', 'lookup', 'data_section', 'data_spec', 'data_keys', 'dataset_of',
           'GROUP_KEYS', 'table_groups', 'table_rows', 'table_dataset', 'figures_dataset',
           'runs_used', 'teachers_used', 'datasets_used',
           'draws_boundary', 'FIGURES_DEFAULTS', 'figures_spec', 'resolve_teacher', 'resolve_run',
           'resolve_evaluate', 'resolve_table', 'table_seeds', 'run_seeds', 'bpkd_methods',
           'resolve_figures', 'unique',
           'param_keys_for_teacher', 'param_keys_for_run', 'param_keys_for_evaluate',
           'param_keys_for_table', 'param_keys_for_figures', 'data_dir', 'teacher_paths',
           'run_paths', 'table_paths', 'FIGURE_NAMES', 'FIGURE_FORMATS', 'figure_paths',
           'curve_paths', 'figures_runs', 'figures_inputs', 'figures_outputs', 'log_path',
           'without_dropped_tables', 'SCHEMA_FILE', 'NAME_PATTERN', 'RESERVED_RUN_NAMES',
           'load_params', 'validate_config',
           'keypath', 'defines', 'file_for', 'schema', 'write_schema', 'LITE_BACKBONES',
           'MIN_BASE_CHANNELS', 'RESOURCE_KINDS', 'rule_threads', 'rule_resources', 'Stage',
           'stage_name', 'command', 'stages', 'table_metrics', 'code_files', 'main_check',
           'Frozen', 'FrozenList', 'freeze', 'DataSpec', 'TeacherCheckpoint', 'EvaluationSpec',
           'TrainSpec', 'data_job', 'evaluation_job', 'teacher_checkpoint', 'teacher_job',
           'student_job']

# Code each kind of stage depends on: files relative to the repository root, computed from the
# import graph of the stage's command (bcd.codedeps), for dvc.yaml ``deps`` and the Snakefile's
# inputs alike. ``DATA_CODE`` ... ``FIGURES_CODE`` are computed on first use (module
# __getattr__): a stage process that never asks does not parse the package.
_CODE_KINDS = {"DATA_CODE": "data", "TEACHER_CODE": "teacher", "TRAIN_CODE": "train",
               "EVALUATE_CODE": "evaluate", "TABLE_CODE": "table", "FIGURES_CODE": "figures"}


def __getattr__(name: str):
    if name in _CODE_KINDS:
        from bcd.codedeps import stage_code

        return stage_code(_CODE_KINDS[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
