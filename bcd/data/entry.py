"""What one dataset of the registry (:mod:`bcd.data.registry`) says about itself: the
:class:`DatasetEntry` a dataset module lists in its ``ENTRIES``. Plain Python, imports nothing
of bcd (the registry imports the dataset modules, which import this)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

#: what a dataset's data serve (DatasetEntry.task)
TASKS = ("segmentation", "detection")

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
    ``dataset(data, root, split, train)``: the mmseg dataset config of one split (a plain dict;
    for ``task`` detection mmdet's ``CocoDataset``, with the split's ``ann_file``).
    ``eval_split(data)``: the split the tables report. ``param_errors(data)``: checks the
    schema cannot express, as ``(key path inside the section, message)``. ``eval_size(data)``:
    ``(H, W)`` of the evaluated images (None: the crop). ``classes``/``palette`` None: those of
    ``mmseg_type`` (mmseg's own dataset classes). ``crop_is_image_size``: the data stage reads
    ``height``/``width`` (the generated shapes). ``task``: ``segmentation`` (label maps, mmseg)
    or ``detection`` (COCO-format instances, mmdet; :data:`bcd.archs.DETECTOR_ARCHS` train on
    these and only these).
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
    task: str = "segmentation"


