"""The run matrix (``params/*.yaml``): loading, validation, resolution, paths and the stage list.

Everything that reads the params goes through this module: the stage commands (``python -m bcd``),
the Snakemake workflow (``workflow/rules/common.smk``) and the generated ``dvc.yaml``
(:func:`stages`). Several files are deep-merged in order, like Snakemake's ``configfile:`` plus
``--configfile`` overlays: dicts merge recursively, lists and scalars replace.

Validation rejects a bad file before any work starts, with the file and the key path::

    params/default.yaml: methods.bd.loss_weight: -1.0 is less than the minimum of 0

Stage names (the same in ``dvc.yaml`` and in Snakemake's log files)::

    data, data-<dataset>, teacher-<teacher>, evaluate-teacher-<teacher>, train-<run>-seed<S>,
    evaluate-<run>-seed<S>, table-<table>, figures

Several datasets in one matrix: the top-level ``data`` section is the dataset of every teacher
and run without a ``dataset`` key (stage ``data``, folder ``paths.data``); an optional
``datasets: {<key>: <a data section>}`` adds more, chosen with ``teachers.T.dataset`` /
``runs.R.dataset: <key>`` (stage ``data-<key>``, folder ``{paths.data}/<key>``). A run
distils on its teacher's dataset and a table's rows share its teacher's dataset
(:func:`dataset_of`, :func:`table_dataset`).
"""
from __future__ import annotations

import copy
import io
import math
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from bcd.archs import BACKBONE_ARCHS, UNAVAILABLE_ARCHS
from bcd.codedeps import stage_code
from bcd.reference import paper_reference_errors

SCHEMA_FILE = Path(__file__).parent / "schema" / "params.schema.yaml"
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
#: Folders under ``paths.runs`` that are not runs.
RESERVED_RUN_NAMES = ("teachers", "logs")

# Code each kind of stage depends on: files relative to the repository root, computed from the
# import graph of the stage's command (bcd.codedeps), for dvc.yaml ``deps`` and the Snakefile's
# inputs alike. A test runs the stages and checks that every bcd module they load is listed.
# ``DATA_CODE`` ... ``FIGURES_CODE`` are computed on first use (module __getattr__): a stage
# process that never asks does not parse the package.
_CODE_KINDS = {"DATA_CODE": "data", "TEACHER_CODE": "teacher", "TRAIN_CODE": "train",
               "EVALUATE_CODE": "evaluate", "TABLE_CODE": "table", "FIGURES_CODE": "figures"}


def __getattr__(name: str):
    if name in _CODE_KINDS:
        return stage_code(_CODE_KINDS[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ParamsError(ValueError):
    """Invalid params. ``errors`` lists ``(file, key_path, message)``; str() has one per line."""

    def __init__(self, message: str, errors: Sequence[tuple[str, str, str]] = ()):
        super().__init__(message)
        self.errors = list(errors)


# ----------------------------------------------------------------------------------------------
# Loading and merging
# ----------------------------------------------------------------------------------------------
class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """SafeLoader (libyaml's parser where PyYAML has it: ~10x faster) that refuses duplicate
    keys (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                except TypeError:  # unhashable key: let the base class report it
                    break
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_params_file(path: str | os.PathLike) -> dict:
    """One params file as a dict; ParamsError naming the file if it is missing or not YAML."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ParamsError(f"{path}: cannot read params file: {err.strerror or err}",
                          [(str(path), "", "cannot read")]) from err
    try:
        data = yaml.load(io.StringIO(text), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        msg = " ".join(str(err).split())
        raise ParamsError(f"{path}: invalid YAML: {msg}", [(str(path), "", msg)]) from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: the top level must be a mapping of keys, not "
                          f"{type(data).__name__}", [(str(path), "", "not a mapping")])
    return data


def deep_merge(base: Mapping, overlay: Mapping) -> dict:
    """``overlay`` on ``base``: dicts merge recursively; lists and scalars replace (Snakemake's
    ``update_config``). Neither argument is modified."""
    out = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        if isinstance(value, Mapping):
            sub = out.get(key)
            out[key] = deep_merge(sub if isinstance(sub, Mapping) else {}, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _as_file_list(files) -> list[str]:
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    files = [str(f) for f in files]
    if not files:
        raise ParamsError("no params file given (use --params FILE)")
    return files


def load_params(files: Sequence[str | os.PathLike] | str | os.PathLike) -> dict:
    """Read, merge (in order) and validate params files.

    Returns the merged dict plus ``cfg["_files"]``, the list of files (see :func:`files_of`).
    Raises :class:`ParamsError` naming the file and the key path of each problem.
    """
    files = _as_file_list(files)
    layers = [(f, read_params_file(f)) for f in files]
    merged: dict = {}
    for _, data in layers:
        merged = deep_merge(merged, data)
    return _checked(merged, layers)


def validate_config(config: Mapping, files: Sequence[str | os.PathLike]) -> dict:
    """Validate an already merged config (Snakemake's ``config``) that came from ``files``.

    Same checks and messages as :func:`load_params`; the files are re-read to name the file that
    set an offending key, and to make sure ``config`` is exactly their merge (a value given with
    Snakemake's ``--config`` would not reach the ``python -m bcd`` commands). Returns the config
    with ``_files``.
    """
    files = _as_file_list(files)
    layers = [(f, read_params_file(f)) for f in files]
    merged: dict = {}
    for _, data in layers:
        merged = deep_merge(merged, data)
    config = {k: v for k, v in dict(config).items() if k != "_files"}
    diff = _first_difference(_plain(merged), _plain(config))
    if diff is not None:
        raise ParamsError(
            f"{_keypath(diff)}: the workflow's config differs from the merge of {files}; "
            "the `python -m bcd` commands read only params files, so put overrides in an overlay "
            "file and pass it with --configfile (not --config)")
    return _checked(merged, layers)


def files_of(cfg: Mapping) -> list[str]:
    """The params files ``cfg`` was loaded from, in merge order."""
    return list(cfg.get("_files", []))


def remake_command(cfg: Mapping, stage: str, path) -> str:
    """How to rebuild one output of the profile ``cfg`` was loaded from, with either tool
    (``--force``: the file may exist and be corrupt, which neither tool would redo by itself)."""
    overlays = [f for f in files_of(cfg) if Path(f).name != "default.yaml"]
    conf = f" --configfile {' '.join(map(str, overlays))}" if overlays else ""
    dvc = f"`dvc repro --force {stage}`" if not overlays else (
        f"`dvc repro --force {stage}` with a dvc.yaml of this profile")
    return f"`snakemake --cores 1 --force{conf} -- {path}` or {dvc}"


def _plain(obj):
    """Plain dicts/lists (Snakemake may hand over OrderedDicts)."""
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _first_difference(a, b, path=()):
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            if key not in a or key not in b:
                return path + (key,)
            sub = _first_difference(a[key], b[key], path + (key,))
            if sub is not None:
                return sub
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            sub = _first_difference(x, y, path + (i,))
            if sub is not None:
                return sub
        return None
    same = (a == b and type(a) is type(b)) or (
        isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
    return None if same else path


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------
def _keypath(path: Iterable) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def defines(data, path) -> bool:
    node = data
    for part in path:
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                return False
        elif not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def file_for(path: Sequence, layers: Sequence[tuple[str, Any]]) -> str:
    """The file to blame for ``path``: the last file that defines it, else the last file that
    defines its longest defined prefix, else the first file."""
    for n in range(len(path), 0, -1):
        for name, data in reversed(layers):
            if defines(data, path[:n]):
                return name
    return layers[0][0]


_VALIDATOR = None


def schema() -> dict:
    with open(SCHEMA_FILE, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _validator():
    global _VALIDATOR
    if _VALIDATOR is None:
        import jsonschema

        _VALIDATOR = jsonschema.Draft202012Validator(schema())
    return _VALIDATOR


def _schema_errors(cfg) -> list[tuple[tuple, str]]:
    out = []
    for err in _validator().iter_errors(cfg):
        path = tuple(err.absolute_path)
        kind = err.validator
        if "propertyNames" in err.absolute_schema_path:
            out.append((path + (err.instance,),
                        f"invalid name {err.instance!r}: names must match {NAME_PATTERN} "
                        "(lower case letters, digits, '-' and '_'; no dots: names are DVC param "
                        "key paths)"))
        elif kind == "additionalProperties" and err.validator_value is False:
            allowed = sorted(err.schema.get("properties", {}))
            for key in sorted(set(err.instance) - set(allowed), key=str):
                out.append((path + (key,), f"unknown key {key!r} (allowed here: "
                                           f"{', '.join(allowed)})"))
        elif kind == "required":
            for key in err.validator_value:
                if key not in err.instance:
                    out.append((path + (key,), "missing (required)"))
        elif kind == "pattern" and err.schema.get("description"):
            out.append((path, f"{err.instance!r} is not {err.schema['description']}"))
        elif kind == "minProperties" and err.validator_value == 1:
            out.append((path, "must not be empty"))
        elif kind == "anyOf" and err.schema.get("description"):
            out.append((path, f"{err.instance!r} is not valid: expected "
                              f"{' '.join(err.schema['description'].split())}"))
        else:
            out.append((path, err.message))
    return out


def _finite_errors(node, path=()) -> list[tuple[tuple, str]]:
    if isinstance(node, float) and not math.isfinite(node):
        return [(path, f"{node} is not a finite number")]
    if isinstance(node, Mapping):
        return [e for k, v in node.items() for e in _finite_errors(v, path + (k,))]
    if isinstance(node, list):
        return [e for i, v in enumerate(node) for e in _finite_errors(v, path + (i,))]
    return []


def _known(names) -> str:
    return ", ".join(sorted(names)) or "none defined"


def _semantic_errors(cfg) -> list[tuple[tuple, str]]:
    """Cross-references and rules the JSON schema cannot express."""
    out = []
    models, teachers, methods = cfg["models"], cfg["teachers"], cfg["methods"]
    runs, tables = cfg["runs"], cfg["tables"]
    for name, spec in models.items():
        out += _model_errors(name, spec)
    datasets = cfg.get("datasets") or {}
    for name, spec in teachers.items():
        if spec["model"] not in models:
            out.append((("teachers", name, "model"),
                        f"unknown model {spec['model']!r} (models: {_known(models)})"))
        if spec.get("dataset") is not None and spec["dataset"] not in datasets:
            out.append((("teachers", name, "dataset"),
                        f"unknown dataset {spec['dataset']!r} (datasets: {_known(datasets)})"))
    for name, spec in runs.items():
        where = ("runs", name)
        if name in RESERVED_RUN_NAMES:
            out.append((where, f"{name!r} is reserved (a folder of paths.runs); rename the run"))
        if spec["student"] not in models:
            out.append((where + ("student",),
                        f"unknown model {spec['student']!r} (models: {_known(models)})"))
        teacher, distill = spec.get("teacher"), spec.get("distill", [])
        if teacher is not None and teacher not in teachers:
            out.append((where + ("teacher",),
                        f"unknown teacher {teacher!r} (teachers: {_known(teachers)})"))
        for i, method in enumerate(distill):
            if method not in methods:
                out.append((where + ("distill", i),
                            f"unknown method {method!r} (methods: {_known(methods)})"))
        if distill and teacher is None:
            out.append((where + ("distill",),
                        f"distillation needs a teacher: set runs.{name}.teacher"))
        shared = {m: methods[m] for m in distill
                  if methods.get(m, {}).get("type") in ("BoundaryDistillLoss", "ContextDistillLoss")}
        for key, default in (("fused_channels", 256), ("teacher_fusion_seed", "run")):
            values = {m: settings.get(key, default) for m, settings in shared.items()}
            if len(set(values.values())) > 1:
                out.append((where + ("distill",),
                            f"BD and CD share one hierarchical connector, but their {key} "
                            f"differ: {values}"))
        if teacher is not None and not distill:
            out.append((where + ("teacher",),
                        f"a teacher but no distill methods: set runs.{name}.distill or drop "
                        "the teacher"))
        if spec.get("weight_decay_schedule") and not distill:
            out.append((where + ("weight_decay_schedule",),
                        "the loss-weight decay r(t) needs distill methods"))
        own = spec.get("dataset")
        if own is not None and own not in datasets:
            out.append((where + ("dataset",),
                        f"unknown dataset {own!r} (datasets: {_known(datasets)})"))
        elif teacher in teachers and teachers[teacher].get("dataset") in (None, *datasets):
            theirs = teachers[teacher].get("dataset")
            if theirs != own:
                out.append((where + ("dataset",),
                            f"run {name!r} trains on {_dataset_label(own)} but its teacher "
                            f"{teacher!r} on {_dataset_label(theirs)}; a run is distilled on its "
                            f"teacher's dataset: set runs.{name}.dataset to "
                            f"{theirs if theirs is not None else '(nothing: the top-level data)'} "
                            "or pick a teacher of that dataset"))
    out += _data_section_errors(cfg["data"], ("data",))
    for key, section in datasets.items():
        out += _data_section_errors(section, ("datasets", key))
    for name, table in tables.items():
        where = ("tables", name)
        if table["teacher"] not in teachers:
            out.append((where + ("teacher",),
                        f"unknown teacher {table['teacher']!r} (teachers: {_known(teachers)})"))
        seen = set()
        for i, row in enumerate(table["rows"]):
            if row["run"] not in runs:
                out.append((where + ("rows", i, "run"),
                            f"unknown run {row['run']!r} (runs: {_known(runs)})"))
            if row["run"] in seen:
                out.append((where + ("rows", i, "run"), f"run {row['run']!r} listed twice"))
            seen.add(row["run"])
        for sub, message in paper_reference_errors(table):
            out.append((where + tuple(sub), message))
        out += _table_dataset_errors(cfg, name)
    if "figures" in cfg:
        out += _figures_errors(cfg)
    if not out:
        out += _data_folder_errors(cfg)
    return out


def _dataset_label(key) -> str:
    return "the top-level data" if key is None else f"datasets.{key}"


def _table_dataset_errors(cfg, name: str) -> list[tuple[tuple, str]]:
    """A table's rows share one dataset and one teacher: its teacher's (the teacher row and the
    gains compare runs on the same data, distilled from the same checkpoint)."""
    table, runs, teachers = cfg["tables"][name], cfg["runs"], cfg["teachers"]
    if table["teacher"] not in teachers:
        return []
    want = teachers[table["teacher"]].get("dataset")
    out = []
    for i, row in enumerate(table["rows"]):
        spec = runs.get(row["run"])
        if spec is None:
            continue
        where = ("tables", name, "rows", i, "run")
        if spec.get("dataset") != want:
            out.append((where, f"table {name!r} mixes datasets: row {i} (run {row['run']!r}) "
                               f"trains on {_dataset_label(spec.get('dataset'))}, the table's "
                               f"teacher {table['teacher']!r} on {_dataset_label(want)} (a "
                               "table's rows share one dataset and teacher)"))
        elif spec.get("teacher") not in (None, table["teacher"]):
            out.append((where, f"table {name!r} mixes teachers: row {i} (run {row['run']!r}) is "
                               f"distilled from {spec['teacher']!r}, the table's teacher is "
                               f"{table['teacher']!r} (a table's rows share one dataset and "
                               "teacher)"))
    return out


def _data_section_errors(data, where: tuple) -> list[tuple[tuple, str]]:
    """Checks of one data section (``data`` or ``datasets.<key>``) the schema cannot express."""
    out = []
    shapes = data.get("shapes") or {}
    if (data["dataset"] == "shapes" and shapes.get("eval_split", "test") == "test"
            and not shapes.get("num_test")):
        out.append((where + ("shapes", "num_test"),
                    f"no test images (num_test {shapes.get('num_test', 'absent')}), but the "
                    "tables report the test split (shapes.eval_split: test, the default): set "
                    "num_test (params/default.yaml has 96), or report val with "
                    "shapes.eval_split: val"))
    if data["dataset"] == "camvid":
        from bcd.data.camvid import SIZE

        for key, have, most in (("height", data["height"], SIZE[1]),
                                ("width", data.get("width") or data["height"], SIZE[0])):
            if have > most:
                out.append((where + (key,), f"crop {key} {have} is larger than the CamVid images "
                                            f"({SIZE[0]}x{SIZE[1]}, WxH)"))
    return out + _paper_data_errors(data, where)


def _data_folder_errors(cfg) -> list[tuple[tuple, str]]:
    """The top-level data stage writes ``paths.data``, the others ``{paths.data}/<key>``: both
    at once would nest one stage's output in another's (refused by DVC and Snakemake)."""
    used = datasets_used(cfg)
    if None not in used or len(used) == 1:
        return []
    users = [f"runs.{r}" for r in runs_used(cfg) if cfg["runs"][r].get("dataset") is None]
    users += [f"teachers.{t}" for t in teachers_used(cfg)
              if cfg["teachers"][t].get("dataset") is None]
    return [(("datasets",), f"the top-level data (its folder paths.data) and datasets "
                            f"{', '.join(k for k in used if k is not None)} (folders "
                            "{paths.data}/<key>) are both used: one data stage's folder would "
                            f"hold the others'; give {', '.join(users[:4])}"
                            f"{' ...' if len(users) > 4 else ''} a `dataset:` key, or move the "
                            "top-level data into datasets")]


#: heads that take a `backbone` key (the others have their own) and each one's backbone
OWN_BACKBONE = {"segformer": "MiT-B0", "espnet": "ESPNet's encoder"}
#: backbones with fixed widths whose `pretrained: imagenet` is an installed package's file
LITE_BACKBONES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
#: the smallest `base_channels` each non-ResNet arch can build with (ESP modules split into 5)
MIN_BASE_CHANNELS = {"espnet": 2}


def _model_errors(name: str, spec) -> list[tuple[tuple, str]]:
    """Keys that do not apply to a model's arch/backbone (the schema lists every key)."""
    where, arch = ("models", name), spec["arch"]
    if arch in UNAVAILABLE_ARCHS:
        return [(where + ("arch",), UNAVAILABLE_ARCHS[arch])]
    out = []
    backbone = spec.get("backbone", "resnet") if arch in BACKBONE_ARCHS else None
    if "backbone" in spec and arch not in BACKBONE_ARCHS:
        out.append((where + ("backbone",), f"{arch} has its own backbone ({OWN_BACKBONE[arch]}); "
                                           f"`backbone` applies to {', '.join(BACKBONE_ARCHS)}"))
    if "depth" in spec and backbone != "resnet":
        out.append((where + ("depth",), f"depth is a ResNet setting; {describe_model(spec)} has "
                                        "none (drop it)"))
    if "aspp_dilations" in spec and arch != "deeplabv3plus":
        out.append((where + ("aspp_dilations",), f"aspp_dilations applies to deeplabv3plus, "
                                                 f"not {arch}"))
    lite = backbone is not None and backbone in LITE_BACKBONES
    if "base_channels" in spec and lite:
        out.append((where + ("base_channels",), f"{backbone} has the fixed widths of its "
                                                "ImageNet weights; drop base_channels"))
    if "output_stride" in spec and not lite:
        out.append((where + ("output_stride",), f"output_stride applies to the "
                                                f"{', '.join(LITE_BACKBONES)} backbones, not "
                                                f"{describe_model(spec)}"))
    if spec.get("pretrained") == "imagenet" and not lite:
        out.append((where + ("pretrained",), f"`imagenet` names the installed weights of the "
                                             f"{', '.join(LITE_BACKBONES)} backbones, not of "
                                             f"{describe_model(spec)}; give a URL or a file"))
    least = MIN_BASE_CHANNELS.get(arch, 1)
    if spec.get("base_channels", least) < least:
        out.append((where + ("base_channels",), f"{arch} needs base_channels >= {least}"))
    return out


def describe_model(spec) -> str:
    """``arch`` plus its backbone, e.g. ``pspnet on mobilenetv2`` (for messages)."""
    if spec["arch"] in OWN_BACKBONE:
        return spec["arch"]
    return f"{spec['arch']} on {spec.get('backbone', 'resnet')}"


def _paper_data_errors(data, where: tuple = ("data",)) -> list[tuple[tuple, str]]:
    """``data.root`` is read by the paper's datasets only; their crop must fit the short side
    the images are rescaled to (mmseg's scale, :mod:`bcd.data.paper`)."""
    from bcd.data.paper import DATASETS as PAPER

    ds = PAPER.get(data["dataset"])
    if ds is None:
        if "root" in data:
            return [(where + ("root",), f"dataset {data['dataset']} does not read data.root "
                                        f"(only {', '.join(PAPER)} do); remove it")]
        return []
    out, short = [], min(ds.scale)
    for key, have in (("height", data["height"]), ("width", data.get("width") or data["height"])):
        if have > short:
            out.append((where + (key,), f"crop {key} {have} is larger than the short side {short} "
                                       f"that {ds.title} images are rescaled to (scale "
                                       f"{ds.scale[0]}x{ds.scale[1]})"))
    return out


def _figures_errors(cfg) -> list[tuple[tuple, str]]:
    """Explicit values of the figures section: a table; two of its rows' runs, the distilled one
    with a boundary term (the boundary figure draws its heads) from the table's teacher (the
    grid's teacher column); one of the seeds. Unset ones are derived (:func:`figures_spec`)."""
    fig, out = cfg["figures"], []
    table = cfg["tables"].get(fig["table"])
    if table is None:
        return [(("figures", "table"), f"unknown table {fig['table']!r} (tables: "
                                       f"{_known(cfg['tables'])})")]
    rows = [row["run"] for row in table["rows"]]
    for key in ("student", "distilled"):
        if key in fig and fig[key] not in rows:
            out.append((("figures", key), f"run {fig[key]!r} is not a row of table "
                                          f"{fig['table']!r} (rows: {', '.join(rows)})"))
    if "seed" in fig and fig["seed"] not in cfg["seeds"]:
        out.append((("figures", "seed"), f"seed {fig['seed']} is not one of seeds "
                                         f"{cfg['seeds']}"))
    run = fig.get("distilled")
    if run in rows and not _draws_boundary(cfg, run, table["teacher"]):
        spec = cfg["runs"].get(run, {})
        has_bd = any(cfg["methods"].get(m, {}).get("type") == "BoundaryDistillLoss"
                     for m in spec.get("distill", []))
        out.append((("figures", "distilled"),
                    f"run {run!r} has no BoundaryDistillLoss term (the boundary figure draws "
                    "its boundary heads)" if not has_bd else
                    f"run {run!r} is distilled from {spec.get('teacher')!r}, not from table "
                    f"{fig['table']!r}'s teacher {table['teacher']!r}"))
    return out


def _draws_boundary(cfg, run: str, teacher: str) -> bool:
    spec = cfg["runs"].get(run, {})
    return spec.get("teacher") == teacher and any(
        cfg["methods"].get(m, {}).get("type") == "BoundaryDistillLoss"
        for m in spec.get("distill", []))


def _checked(cfg: dict, layers) -> dict:
    problems = _schema_errors(cfg) + _finite_errors(cfg)
    if not problems:
        problems = _semantic_errors(cfg)
    if problems:
        errors = [(file_for(path, layers), _keypath(path), msg) for path, msg in problems]
        lines = [f"{f}: {k}: {m}" for f, k, m in errors]
        if len(lines) > 1:
            lines.insert(0, f"{len(lines)} problems:")
        raise ParamsError("\n".join(lines), errors)
    cfg = copy.deepcopy(cfg)
    cfg["_files"] = [name for name, _ in layers]
    return cfg


# ----------------------------------------------------------------------------------------------
# Paths (relative to the repository root, the working directory of every stage)
# ----------------------------------------------------------------------------------------------
def data_dir(cfg, dataset: str | None = None) -> Path:
    """The data stage's folder: ``paths.data`` for the top-level ``data``, ``{paths.data}/<key>``
    for ``datasets.<key>``."""
    root = Path(cfg["paths"]["data"])
    return root if dataset is None else root / str(dataset)


def _stage_files(folder: Path) -> dict:
    """``metrics``: the full evaluation (per class, every metric, provenance); ``summary``: its
    headline numbers, the file DVC shows as the stage's metrics (``dvc metrics show``)."""
    return dict(dir=folder, model=folder / "model.pth", train_log=folder / "train_log.json",
                metrics=folder / "metrics.json", summary=folder / "summary.json")


def teacher_paths(cfg, name: str) -> dict:
    return _stage_files(Path(cfg["paths"]["runs"]) / "teachers" / str(name))


def run_paths(cfg, run: str, seed) -> dict:
    """A student run's files; ``distill_heads`` is the distiller's state (connectors and loss
    heads, e.g. BD's boundary convs), which ``model.pth`` (the student alone) lacks; a run
    without distillation writes an empty one."""
    folder = Path(cfg["paths"]["runs"]) / str(run) / f"seed{seed}"
    return {**_stage_files(folder), "distill_heads": folder / "distill_heads.pth"}


def table_paths(cfg, name: str) -> dict:
    folder = Path(cfg["paths"]["results"]) / "tables"
    return dict(csv=folder / f"{name}.csv", tex=folder / f"{name}.tex")


FIGURE_NAMES = ("qualitative", "boundary", "training_curves", "ablation")
#: Defaults of the optional display keys of the ``figures`` section.
FIGURES_DEFAULTS = {"num_images": 4, "select": "most_different", "boundary_images": 2}


def figures_spec(cfg) -> dict | None:
    """The ``figures`` section, resolved; None when there is none, or when a run it leaves unset
    cannot be derived (then there is no figures stage, as a run no table lists is not built).

    Unset keys: ``seed`` = the first of ``seeds``; ``student`` = the table's first row without
    distillation; ``distilled`` = its last row with a BoundaryDistillLoss term from the table's
    teacher; the display keys from :data:`FIGURES_DEFAULTS`.
    """
    fig = cfg.get("figures")
    if fig is None:
        return None
    table = cfg["tables"][fig["table"]]
    rows = [row["run"] for row in table["rows"]]
    plain = [r for r in rows if not cfg["runs"][r].get("distill")]
    boundary = [r for r in rows if _draws_boundary(cfg, r, table["teacher"])]
    spec = {**FIGURES_DEFAULTS, "seed": cfg["seeds"][0],
            "student": plain[0] if plain else None,
            "distilled": boundary[-1] if boundary else None, **fig}
    return spec if spec["student"] and spec["distilled"] else None
FIGURE_FORMATS = ("png", "pdf")


def figure_paths(cfg) -> dict:
    """``{name: {format: path}}`` of the figures (``{paths.results}/figures/``)."""
    folder = Path(cfg["paths"]["results"]) / "figures"
    return {name: {fmt: folder / f"{name}.{fmt}" for fmt in FIGURE_FORMATS}
            for name in FIGURE_NAMES}


def curve_paths(cfg, run: str, seed) -> dict:
    """Flat per-iteration exports of a run's train_log.json (``dvc plots``): ``train`` (one row
    per logged iteration) and ``val`` (one row per validation)."""
    folder = Path(cfg["paths"]["results"]) / "plots"
    return {"train": folder / f"{run}-seed{seed}.csv", "val": folder / f"{run}-seed{seed}-val.csv"}


def figures_runs(cfg) -> list[str]:
    """Runs whose training curves the figures stage draws and exports: the figures table's rows."""
    return [row["run"] for row in cfg["tables"][figures_spec(cfg)["table"]]["rows"]]


def figures_inputs(cfg) -> dict:
    """Every file the figures stage reads, by role (paths as strings)."""
    fig = figures_spec(cfg)
    seed, teacher = fig["seed"], cfg["tables"][fig["table"]]["teacher"]
    t, s, d = (teacher_paths(cfg, teacher), run_paths(cfg, fig["student"], seed),
               run_paths(cfg, fig["distilled"], seed))
    return {
        "data": str(data_dir(cfg, figures_dataset(cfg))),
        "weights": [str(t["model"]), str(s["model"]), str(d["model"]), str(d["distill_heads"])],
        "metrics": [str(t["metrics"]), str(s["metrics"]), str(d["metrics"])],
        "train_logs": [str(run_paths(cfg, r, seed)["train_log"]) for r in figures_runs(cfg)],
        "table": str(table_paths(cfg, fig["table"])["csv"]),
    }


def figures_outputs(cfg) -> list[str]:
    """The figures (every format) and the curve exports, as strings."""
    out = [str(p) for formats in figure_paths(cfg).values() for p in formats.values()]
    for run in figures_runs(cfg):
        out += [str(p) for p in curve_paths(cfg, run, figures_spec(cfg)["seed"]).values()]
    return out


def log_path(cfg, stage: str) -> Path:
    """Snakemake's ``log:`` file of a stage (DVC prints the output instead)."""
    return Path(cfg["paths"]["runs"]) / "logs" / f"{stage}.log"


# ----------------------------------------------------------------------------------------------
# Resolution: everything one stage depends on
# ----------------------------------------------------------------------------------------------
def lookup(cfg, section: str, name: str) -> dict:
    """``cfg[section][name]``, or a ParamsError naming the section's known names."""
    try:
        return cfg[section][name]
    except KeyError:
        raise ParamsError(f"{', '.join(files_of(cfg)) or 'params'}: {section}.{name}: not defined "
                          f"({section}: {_known(cfg.get(section, {}))})") from None


DATASETS = ("shapes", "camvid")  # each has its own settings section under `data`


def data_section(cfg, dataset: str | None = None) -> dict:
    """The data section of a dataset key: the top-level ``data`` (None) or ``datasets.<key>``."""
    if dataset is None:
        return cfg["data"]
    return lookup(cfg, "datasets", dataset)


def data_spec(cfg, dataset: str | None = None) -> dict:
    """The data settings a stage depends on: the shared keys and the chosen dataset's section
    (the sections of other datasets are left out, so changing them reruns nothing), of the
    top-level ``data`` or of ``datasets.<dataset>``."""
    data = data_section(cfg, dataset)
    return {k: copy.deepcopy(v) for k, v in data.items()
            if k not in DATASETS or k == data["dataset"]}


def data_keys(cfg, dataset: str | None = None) -> list[str]:
    """Key paths of :func:`data_spec` (a stage's DVC ``params``)."""
    prefix = "data" if dataset is None else f"datasets.{dataset}"
    return [f"{prefix}.{k}" for k in data_spec(cfg, dataset)]


def dataset_of(cfg, *, run: str | None = None, teacher: str | None = None) -> str | None:
    """The dataset key of a run or teacher (``dataset``; None = the top-level ``data``)."""
    if teacher is not None:
        return lookup(cfg, "teachers", teacher).get("dataset")
    return lookup(cfg, "runs", run).get("dataset")


def table_dataset(cfg, name: str) -> str | None:
    """A table's dataset: its teacher's (every row shares it, checked by the validation)."""
    return dataset_of(cfg, teacher=lookup(cfg, "tables", name)["teacher"])


def figures_dataset(cfg) -> str | None:
    """The figures' dataset: their table's (None without a figures section)."""
    fig = cfg.get("figures")
    return table_dataset(cfg, fig["table"]) if fig else None


def datasets_used(cfg) -> list[str | None]:
    """The dataset keys the built stages use: None (the top-level ``data``) first, then the
    ``datasets`` keys in their order."""
    used = {cfg["teachers"][t].get("dataset") for t in teachers_used(cfg)}
    used |= {cfg["runs"][r].get("dataset") for r in runs_used(cfg)}
    return [k for k in (None, *(cfg.get("datasets") or {})) if k in used]


def resolve_teacher(cfg, name: str) -> dict:
    """A teacher, fully resolved: ``name, model_name, model`` (the model spec), ``seed``,
    ``train`` (train.teacher) and ``data``. Keys: :func:`param_keys_for_teacher`."""
    spec = lookup(cfg, "teachers", name)
    return {
        "name": name,
        "model_name": spec["model"],
        "model": copy.deepcopy(lookup(cfg, "models", spec["model"])),
        "seed": spec["seed"],
        "train": copy.deepcopy(cfg["train"]["teacher"]),
        "data": data_spec(cfg, spec.get("dataset")),
    }


def resolve_run(cfg, run: str) -> dict:
    """A student run, fully resolved (seeds aside): what the training code reads, and what
    Snakemake compares to decide a rerun. Keys: :func:`param_keys_for_run`.

    ``{"name", "student": {"model_name", "model"}, "teacher": None | {"name", "model_name",
    "model", "seed", "train"}, "methods": {name: settings}, "weight_decay_schedule", "train",
    "data"}``
    """
    spec = lookup(cfg, "runs", run)
    teacher = None
    if spec.get("teacher") is not None:
        teacher = resolve_teacher(cfg, spec["teacher"])
        del teacher["data"]
    return {
        "name": run,
        "student": {"model_name": spec["student"],
                    "model": copy.deepcopy(lookup(cfg, "models", spec["student"]))},
        "teacher": teacher,
        "methods": {m: copy.deepcopy(lookup(cfg, "methods", m)) for m in spec.get("distill", [])},
        "weight_decay_schedule": bool(spec.get("weight_decay_schedule", False)),
        "train": copy.deepcopy(cfg["train"]["student"]),
        "data": data_spec(cfg, spec.get("dataset")),
    }


def resolve_evaluate(cfg, *, run: str | None = None, teacher: str | None = None) -> dict:
    """What an evaluation depends on besides the weights: the model spec and the data."""
    ev = copy.deepcopy(cfg.get("evaluation") or {})
    data = data_spec(cfg, dataset_of(cfg, run=run, teacher=teacher))
    if teacher is not None:
        return {"model": resolve_teacher(cfg, teacher)["model"], "data": data, "evaluation": ev}
    return {"model": resolve_run(cfg, run)["student"]["model"], "data": data, "evaluation": ev}


def resolve_table(cfg, name: str) -> dict:
    return {"table": copy.deepcopy(lookup(cfg, "tables", name)), "seeds": list(cfg["seeds"])}


def bpkd_methods(cfg) -> list[str]:
    """Methods of type BPKDLoss (the boundary figure draws BPKD's edge mask with the first)."""
    return [m for m, spec in cfg["methods"].items() if spec["type"] == "BPKDLoss"]


def resolve_figures(cfg) -> dict:
    """What the figures depend on besides their input files: the resolved figures section, the
    data settings (split, palette) and BPKD's edge settings."""
    bpkd = bpkd_methods(cfg)
    return {"figures": figures_spec(cfg), "data": data_spec(cfg, figures_dataset(cfg)),
            "bpkd": copy.deepcopy(cfg["methods"][bpkd[0]]) if bpkd else None}


def _unique(keys: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(keys))


def param_keys_for_teacher(cfg, name: str) -> list[str]:
    spec = lookup(cfg, "teachers", name)
    return _unique([f"teachers.{name}", f"models.{spec['model']}", "train.teacher",
                    *data_keys(cfg, spec.get("dataset"))])


def param_keys_for_run(cfg, run: str) -> list[str]:
    spec = lookup(cfg, "runs", run)
    keys = [f"runs.{run}", f"models.{spec['student']}", "train.student",
            *data_keys(cfg, spec.get("dataset"))]
    if spec.get("teacher") is not None:
        keys += param_keys_for_teacher(cfg, spec["teacher"])
    keys += [f"methods.{m}" for m in spec.get("distill", [])]
    return _unique(keys)


def param_keys_for_evaluate(cfg, *, run: str | None = None, teacher: str | None = None):
    ev = ["evaluation"] if "evaluation" in cfg else []
    data = data_keys(cfg, dataset_of(cfg, run=run, teacher=teacher))
    if teacher is not None:
        return [f"models.{lookup(cfg, 'teachers', teacher)['model']}", *data, *ev]
    return [f"models.{lookup(cfg, 'runs', run)['student']}", *data, *ev]


def param_keys_for_table(cfg, name: str) -> list[str]:
    lookup(cfg, "tables", name)
    return [f"tables.{name}", "seeds"]


def param_keys_for_figures(cfg) -> list[str]:
    return _unique(["figures", *data_keys(cfg, figures_dataset(cfg)),
                    *[f"methods.{m}" for m in bpkd_methods(cfg)[:1]]])


# ----------------------------------------------------------------------------------------------
# Resources of the workflow's jobs (params `resources`; Snakemake `threads:` / `resources:`)
# ----------------------------------------------------------------------------------------------
#: Kinds of jobs with their own `resources.<kind>` (Snakemake rules: `evaluate_teacher` is
#: an `evaluate`).
RESOURCE_KINDS = ("data", "teacher", "train", "evaluate", "table", "figures")
#: Optional fields passed to Snakemake (and the SLURM plugin) under the same name.
_SLURM_FIELDS = ("slurm_partition", "slurm_account", "slurm_extra")


def rule_threads(cfg, kind: str) -> int:
    """Snakemake ``threads:`` of a kind of job (``resources.<kind>.threads``)."""
    return int(lookup(cfg, "resources", kind)["threads"])


def rule_resources(cfg, kind: str) -> dict:
    """Snakemake ``resources:`` of a kind of job, from ``resources.<kind>``.

    Names are those of Snakemake and snakemake-executor-plugin-slurm: ``mem_mb`` (--mem),
    ``runtime`` in minutes (-t), ``cpus_per_task`` = threads (--cpus-per-task; explicit, so a
    dry run shows what SLURM gets although it caps ``threads`` at --cores), ``gpu`` (--gpus;
    only when > 0) and the optional ``slurm_partition`` (-p), ``slurm_account`` (-A) and
    ``slurm_extra``. Not part of any stage's spec: changing them reruns nothing.
    """
    spec = lookup(cfg, "resources", kind)
    out = {"mem_mb": int(spec["mem_mb"]), "runtime": int(spec["runtime"]),
           "cpus_per_task": int(spec["threads"])}
    if spec["gpus"]:
        out["gpu"] = int(spec["gpus"])
    out.update({k: spec[k] for k in _SLURM_FIELDS if k in spec})
    return out


# ----------------------------------------------------------------------------------------------
# Stages: the DAG shared by the Snakefile and dvc.yaml
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stage:
    name: str
    cmd: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    metrics: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    cache: bool = True  # False: outs are small files kept in git (tables)


def stage_name(kind: str, name: str | None = None, seed=None) -> str:
    """``data`` (the top-level data) or ``data-D`` (``datasets.D``), ``teacher-T``,
    ``evaluate-teacher-T``, ``train-R-seedS``, ``evaluate-R-seedS``, ``table-N``, ``figures``."""
    if kind == "figures" or (kind == "data" and name is None):
        return kind
    if kind == "data":
        return f"data-{name}"
    if kind in ("teacher", "evaluate-teacher", "table"):
        return f"{kind}-{name}"
    if kind in ("train", "evaluate"):
        return f"{kind}-{name}-seed{seed}"
    raise ValueError(f"unknown stage kind {kind!r}")


def command(cfg, subcommand: str, *args: str, python: str = "python") -> str:
    """The shell command of a stage: ``python -m bcd SUB --params F... ARGS``."""
    params = [f"--params {shlex.quote(f)}" for f in files_of(cfg)]
    return " ".join([python, "-m", "bcd", subcommand, *params, *args])


def runs_used(cfg) -> list[str]:
    """The runs some table needs, in the order of ``runs``: the workflow's run matrix (a run
    no table lists is defined but not built, so a profile shrinks the DAG by its table rows)."""
    used = {row["run"] for t in cfg["tables"].values() for row in t["rows"]}
    return [r for r in cfg["runs"] if r in used]


def teachers_used(cfg) -> list[str]:
    used = [cfg["runs"][r]["teacher"] for r in runs_used(cfg)
            if cfg["runs"][r].get("teacher") is not None]
    used += [t["teacher"] for t in cfg["tables"].values()]
    return [t for t in cfg["teachers"] if t in used]


def stages(cfg) -> list[Stage]:
    """Every stage: the data of each dataset used, the teachers used, every run a table needs x
    seed, every table, and the figures (when the params have a ``figures`` section, see
    :func:`figures_spec`)."""
    out = []
    for ds in datasets_used(cfg):
        args = () if ds is None else ("--dataset", ds)
        crop = [f"{k}.{c}" for k in (["data"] if ds is None else [f"datasets.{ds}"])
                for c in ("height", "width")]
        shapes = data_section(cfg, ds)["dataset"] == "shapes"  # the crop is the image size
        out.append(Stage(stage_name("data", ds), command(cfg, "data", *args), stage_code("data"),
                         (str(data_dir(cfg, ds)),),
                         params=tuple(k for k in data_keys(cfg, ds) if k not in crop or shapes)))
    for t in teachers_used(cfg):
        data = str(data_dir(cfg, dataset_of(cfg, teacher=t)))
        p = teacher_paths(cfg, t)
        out.append(Stage(stage_name("teacher", t), command(cfg, "teacher", "--teacher", t),
                         (data, *stage_code("teacher")), (str(p["model"]), str(p["train_log"])),
                         params=tuple(param_keys_for_teacher(cfg, t))))
        out.append(Stage(stage_name("evaluate-teacher", t),
                         command(cfg, "evaluate", "--teacher", t),
                         (data, str(p["model"]), *stage_code("evaluate")), (str(p["metrics"]),),
                         (str(p["summary"]),), params=tuple(param_keys_for_evaluate(cfg, teacher=t)),
                         cache=False))
    for run in runs_used(cfg):
        spec = cfg["runs"][run]
        data = str(data_dir(cfg, spec.get("dataset")))
        teacher = spec.get("teacher")
        teacher_model = (str(teacher_paths(cfg, teacher)["model"]),) if teacher else ()
        for seed in cfg["seeds"]:
            p = run_paths(cfg, run, seed)
            args = ("--run", run, "--seed", str(seed))
            out.append(Stage(stage_name("train", run, seed), command(cfg, "train", *args),
                             (data, *teacher_model, *stage_code("train")),
                             (str(p["model"]), str(p["train_log"]), str(p["distill_heads"])),
                             params=tuple(param_keys_for_run(cfg, run))))
            out.append(Stage(stage_name("evaluate", run, seed), command(cfg, "evaluate", *args),
                             (data, str(p["model"]), *stage_code("evaluate")),
                             (str(p["metrics"]),), (str(p["summary"]),),
                             params=tuple(param_keys_for_evaluate(cfg, run=run)), cache=False))
    for name in cfg["tables"]:
        p = table_paths(cfg, name)
        out.append(Stage(stage_name("table", name), command(cfg, "table", "--table", name),
                         (*stage_code("table"), *map(str, table_metrics(cfg, name))),
                         (str(p["csv"]), str(p["tex"])),
                         params=tuple(param_keys_for_table(cfg, name)), cache=False))
    if figures_spec(cfg) is not None:
        ins = figures_inputs(cfg)
        deps = (ins["data"], *ins["weights"], *ins["metrics"], *ins["train_logs"], ins["table"])
        out.append(Stage(stage_name("figures"), command(cfg, "figures"),
                         (*_unique(deps), *stage_code("figures")), tuple(figures_outputs(cfg)),
                         params=tuple(param_keys_for_figures(cfg)), cache=False))
    names = [s.name for s in out]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ParamsError(f"{', '.join(files_of(cfg))}: two stages would be named "
                          f"{', '.join(clashes)}; rename a run or teacher")
    return out


def table_metrics(cfg, name: str) -> list[Path]:
    """The metrics.json files a table reads: its teacher's, then every row's run x seed."""
    table = lookup(cfg, "tables", name)
    files = [teacher_paths(cfg, table["teacher"])["metrics"]]
    files += [run_paths(cfg, row["run"], seed)["metrics"]
              for row in table["rows"] for seed in cfg["seeds"]]
    return files


def code_files(paths: Iterable[str]) -> list[str]:
    """Code paths with folders expanded to their files (what DVC hashes; caches excluded)."""
    out = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            out += sorted(str(f) for f in path.rglob("*") if f.is_file()
                          and "__pycache__" not in f.parts and f.suffix != ".pyc")
        else:
            out.append(str(path))
    return out


# ----------------------------------------------------------------------------------------------
# Commands (wired into bcd/cli.py)
# ----------------------------------------------------------------------------------------------
def main_check(args) -> None:
    """``python -m bcd check-params --params F...``: validate and print a summary."""
    cfg = load_params(args.params)
    st = stages(cfg)
    print(f"params OK: {' + '.join(files_of(cfg))} (profile {cfg['profile']})")
    several = cfg.get("datasets") is not None
    print(f"  seeds {cfg['seeds']}")
    for ds in datasets_used(cfg):
        key = "data" if ds is None else f"datasets.{ds}"
        print(f"  {key}: {data_section(cfg, ds)['dataset']} -> {data_dir(cfg, ds)}")

    def on(ds) -> str:
        return f" on {'data' if ds is None else ds}" if several else ""

    for t in teachers_used(cfg):
        spec = cfg["teachers"][t]
        print(f"  teacher {t}: {spec['model']}, {cfg['train']['teacher']['iters']} iters"
              f"{on(spec.get('dataset'))}")
    for run, spec in cfg["runs"].items():
        kd = (f" <- {spec['teacher']} [{', '.join(spec['distill'])}"
              f"{' + r(t)' if spec.get('weight_decay_schedule') else ''}]"
              if spec.get("distill") else "")
        print(f"  run {run}: {spec['student']}{kd}{on(spec.get('dataset'))}")
    for name, table in cfg["tables"].items():
        print(f"  table {name}: {len(table['rows'])} rows{on(table_dataset(cfg, name))} -> "
              f"{table_paths(cfg, name)['csv']}")
    fig = figures_spec(cfg)
    if fig is not None:
        print(f"  figures: {fig['student']} vs {fig['distilled']} (seed {fig['seed']}), "
              f"table {fig['table']} -> {Path(cfg['paths']['results']) / 'figures'}")
    elif "figures" in cfg:
        print(f"  figures: none (table {cfg['figures']['table']} has no row without "
              "distillation or none with BD from its teacher; set figures.student/distilled)")
    kinds: dict[str, int] = {}
    for s in st:
        kind = s.name.split("-")[0] if not s.name.startswith("evaluate-teacher") else "evaluate"
        kinds[kind] = kinds.get(kind, 0) + 1
    print(f"  {len(st)} stages: " + ", ".join(f"{n} {k}" for k, n in kinds.items()))
