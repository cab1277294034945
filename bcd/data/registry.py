"""The dataset registry: one :class:`DatasetEntry` per value of the params' ``data.dataset``.

Everything that depends on the dataset looks its entry up (:func:`dataset_entry`) instead of
branching on the name: the data stage (``prepare``), the checks before training and evaluation
(``require``), the params validation (``settings``: the JSON schema of the data-section keys it
reads, merged into ``bcd/schema/params.schema.yaml``'s ``data``; ``param_errors``), the mmseg
dataset configs (``dataset``: plain dicts) and the evaluation facts (``eval_split``,
``eval_size``, ``eval_batch_size``), the class names and palette (figures, class weights).

Entries (:class:`bcd.data.entry.DatasetEntry`) live in the modules of the :mod:`bcd.data`
package, each module listing its own in a module-level ``ENTRIES`` tuple; :func:`entries`
imports every module of the package once and collects them (so adding a dataset is adding one module here, README "Adding a dataset").
Plain Python: no torch or OpenMMLab import (the mmseg configs are plain dicts).
"""
from __future__ import annotations

import importlib
import pkgutil

from bcd.data.entry import COMMON_KEYS, Data, DatasetEntry

_ENTRIES: dict[str, DatasetEntry] | None = None


def _discover() -> dict[str, DatasetEntry]:
    """The ``ENTRIES`` of every module of :mod:`bcd.data`, in module-name order."""
    import bcd.data as package

    found: dict[str, DatasetEntry] = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name in ("registry", "entry") or info.name.startswith("_"):
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
    ``voc12aug``, ``cityscapes``, ``ade20k``, ``coco_stuff10k``; for detection
    ``shapes_coco`` and ``coco2017``, :mod:`bcd.data.coco`)."""
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
