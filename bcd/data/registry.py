"""The dataset registry: one :class:`DatasetEntry` per value of the params' ``data.dataset``.

Everything that depends on the dataset looks its entry up (:func:`dataset_entry`) instead of
branching on the name: the data stage (``prepare``), the checks before training and evaluation
(``require``), the params validation (``settings``: the JSON schema of the data-section keys it
reads, merged into ``bcd/schema/params.schema.yaml``'s ``data``; ``param_errors``), the mmseg
dataset configs (``dataset``: plain dicts) and the evaluation facts (``eval_split``,
``eval_size``, ``eval_batch_size``), the class names and palette (figures, class weights).

Entries live in the modules of the :mod:`bcd.data` package, each module listing its own in a
module-level ``ENTRIES`` tuple; :func:`entries` imports every module of the package once and
collects them (so adding a dataset is adding one module here, README "Adding a dataset").
Plain Python: no torch or OpenMMLab import (the mmseg configs are plain dicts).
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

#: the data-section keys every dataset has (the schema's ``data`` lists them)
COMMON_KEYS = ("dataset", "height", "width")

Data = Mapping[str, Any]  # a data section of the params (``data`` or ``datasets.<key>``)


def _no_errors(data: Data) -> list:
    return []


def crop_size(data: Data) -> tuple[int, int]:
    """Training crop ``(H, W)`` of a data section (``width`` defaults to ``height``)."""
    return (data["height"], data.get("width") or data["height"])


@dataclass(frozen=True)
class DatasetEntry:
    """What the rest of bcd needs to know about one dataset.

    ``settings``: the JSON schema of each data-section key the dataset reads besides
    ``dataset``/``height``/``width`` (a key named after the dataset is its own settings
    section, kept but ignored when another dataset is chosen; any other key, e.g. ``root``, is
    refused for datasets that do not read it); ``required``: those of them that must be set.
    ``prepare(data, folder)``: the data stage (``folder`` = its output folder); returns the
    dataset's folder. ``require(data, folder, make)``: before training/evaluation, the dataset's
    folder or a FileNotFoundError (``make``: how to run the data stage, for messages).
    ``dataset(data, root, split, train)``: the mmseg dataset config of one split (a plain dict).
    ``eval_split(data)``: the split the tables report. ``param_errors(data)``: checks the
    schema cannot express, as ``(key path inside the section, message)``. ``eval_size(data)``:
    ``(H, W)`` of the evaluated images (None: the crop). ``classes``/``palette`` None: those of
    ``mmseg_type`` (mmseg's own dataset classes). ``crop_is_image_size``: the data stage reads
    ``height``/``width`` (the generated shapes).
    """

    name: str
    title: str
    mmseg_type: str
    num_classes: int
    prepare: Callable[[Data, Path], Path]
    require: Callable[[Data, Path, str], Path]
    dataset: Callable[[Data, Path, str, bool], dict]
    eval_split: Callable[[Data], str]
    settings: Mapping[str, dict] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    param_errors: Callable[[Data], list] = _no_errors
    classes: tuple[str, ...] | None = None
    palette: tuple[tuple[int, int, int], ...] | None = None
    eval_size: Callable[[Data], tuple[int, int]] | None = None
    eval_batch_size: int = 8  # 1 where image sizes vary (mmseg stacks a test batch unpadded)
    crop_is_image_size: bool = False


_ENTRIES: dict[str, DatasetEntry] | None = None


def _discover() -> dict[str, DatasetEntry]:
    """The ``ENTRIES`` of every module of :mod:`bcd.data`, in module-name order."""
    import bcd.data as package

    found: dict[str, DatasetEntry] = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name == "registry" or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for entry in getattr(module, "ENTRIES", ()):
            if not isinstance(entry, DatasetEntry):
                raise TypeError(f"{module.__name__}.ENTRIES holds {entry!r}, not a DatasetEntry")
            if entry.name in found:
                raise ValueError(f"dataset {entry.name!r} is registered twice (again in "
                                 f"{module.__name__})")
            found[entry.name] = entry
    return found


def entries() -> dict[str, DatasetEntry]:
    """Every registered dataset by name (built-ins: ``shapes``, ``camvid`` and the paper's
    ``voc12aug``, ``cityscapes``, ``ade20k``, ``coco_stuff10k``)."""
    global _ENTRIES
    if _ENTRIES is None:
        _ENTRIES = _discover()
    return _ENTRIES


def names() -> tuple[str, ...]:
    """The registered dataset names, built-ins first in their historical order."""
    known = entries()
    first = [n for n in ("shapes", "camvid", "voc12aug", "cityscapes", "ade20k", "coco_stuff10k")
             if n in known]
    return (*first, *(n for n in known if n not in first))


def dataset_entry(data: Data | str) -> DatasetEntry:
    """The entry of a data section (its ``dataset``) or of a dataset name."""
    name = data if isinstance(data, str) else data["dataset"]
    known = entries()
    if name not in known:
        raise ValueError(f"unknown dataset {name!r} (known: {', '.join(names())})")
    return known[name]


def section_keys() -> tuple[str, ...]:
    """The data-section keys that are some dataset's own settings section (named after it)."""
    return tuple(n for n in names() if n in entries()[n].settings)


def data_schema(base: dict) -> dict:
    """The schema's ``data`` object (``base``: its common part from params.schema.yaml) with the
    registry's datasets: the ``dataset`` enum, each dataset's settings, and what each requires."""
    out = {**base, "properties": dict(base.get("properties", {}))}
    out["properties"]["dataset"] = {**out["properties"].get("dataset", {}), "enum": list(names())}
    requires: dict[tuple[str, ...], list[str]] = {}
    for name in names():
        entry = entries()[name]
        for key, sub in entry.settings.items():
            have = out["properties"].get(key)
            if have is not None and have != sub:
                raise ValueError(f"dataset {name!r} declares data.{key} with another schema than "
                                 "a dataset before it")
            out["properties"][key] = sub
        if entry.required:
            requires.setdefault(tuple(entry.required), []).append(name)
    out["allOf"] = [{"if": {"properties": {"dataset": {"enum": group}}},
                     "then": {"required": list(keys)}} for keys, group in requires.items()]
    return out


def key_errors(data: Data) -> list[tuple[tuple, str]]:
    """Keys of a data section that its dataset does not read (another dataset's settings that are
    not a section named after it, e.g. ``root``)."""
    entry, out = dataset_entry(data), []
    for key in data:
        if key in COMMON_KEYS or key in entry.settings or key in section_keys():
            continue
        readers = [n for n in names() if key in entries()[n].settings]
        if readers:
            out.append(((key,), f"dataset {entry.name} does not read data.{key} (only "
                                f"{', '.join(readers)} do); remove it"))
    return out


def settings_of(data: Data) -> dict:
    """The part of a data section its dataset reads: the common keys and its own settings (the
    sections of other datasets are left out, so changing them reruns nothing)."""
    others = set(section_keys()) - {data["dataset"]}
    return {k: v for k, v in data.items() if k not in others}
