"""Reading params files: YAML with duplicate keys refused, the deep merge of overlays, and the
error type every params problem raises."""
from __future__ import annotations

import copy
import io
import os
from pathlib import Path
from typing import Mapping, Sequence

import yaml


class ParamsError(ValueError):
    """Invalid params. ``errors`` lists ``(file, key_path, message)``; str() has one per line."""

    def __init__(self, message: str, errors: Sequence[tuple[str, str, str]] = ()):
        super().__init__(message)
        self.errors = list(errors)


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


def known_names(names) -> str:
    return ", ".join(sorted(names)) or "none defined"
