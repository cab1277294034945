"""The distillation methods: one declaration per loss, next to the loss; everything else derives.

Each loss module under ``bcd/losses/`` declares, at top level, what the rest of bcd needs to
know about it::

    METHOD = Method(
        type="FeatureL2Loss",                       # params `methods.<name>.type` = class name
        inputs=dict(preds_S="student.head", preds_T="teacher.head"),  # forward arg -> tap
        settings=dict(eps=POSITIVE),                # params keys -> JSON Schema of the value
        channels=dict(student_channels="preds_S", teacher_channels="preds_T"),
    )

From these declarations come: the ``methods`` part of the params schema (:func:`schema`, with
the one-line ``FILE: key: message`` errors of :mod:`bcd.params`), the losses registered in
mmrazor (:mod:`bcd.mm.registry`), the distiller's recorders, connectors and constructor
channels (:func:`bcd.mm.configs.distiller`), and which terms r(t) scales. Adding a loss is its
file (the class and its ``METHOD``) and its test; a run uses it from a params file.

This module reads the declarations *without importing the loss modules* (no torch: params
validation, the Snakefile and ``python -m bcd dvc-yaml`` stay light). It parses each file of
``bcd/losses`` and evaluates its ``METHOD = Method(...)`` expression with only this module's
public names and the file's literal top-level constants (e.g. ``TEACHERS = ("probe", ...)``) in
scope. Importing the module evaluates the same expression; a test checks both agree. No torch,
no mm* import here.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

LOSSES = Path(__file__).resolve().parent / "losses"

#: tensors the distiller can hand to a loss (bcd.mm.configs.TAPS says where each is recorded):
#: the fused backbone levels (Sec. IV-A), the classifier's output (logits) and input (the
#: decoder's last features, "head"), the first backbone level ("low"), a detector's FPN outputs
#: ("neck", a tuple of levels), the ground-truth labels (segmentation: the label map; detectors:
#: their instances drawn as a label map, bcd.mm.detection.instance_label_map).
#: Detectors only (bcd.mm.detection.DetTaps names each detector's dense head: GFL's and
#: RetinaNet's box head, Cascade Mask R-CNN's RPN head): the dense head's per-level class logits
#: ("head_cls") and box outputs ("head_reg"; "box_dists" where they are box-edge distributions,
#: GFL only), the student assigner's positive anchors per level and their number, the head's
#: features before its last conv ("head_held", pre-activation; CrossKD), the teacher head's last
#: conv and predictors as a module ("head_tail", parameters used detached) and its box decoder;
#: each image's ground-truth boxes and image metas ("gt_boxes", "img_metas")
TAP_NAMES = ("student.fused", "teacher.fused", "student.logits", "teacher.logits",
             "student.head", "teacher.head", "student.low", "teacher.low",
             "student.neck", "teacher.neck", "labels",
             "student.head_cls", "teacher.head_cls", "student.head_reg", "teacher.head_reg",
             "student.box_dists", "teacher.box_dists", "student.positives",
             "student.num_positives", "student.head_held", "teacher.head_held",
             "teacher.head_tail", "teacher.box_decoder", "gt_boxes", "img_metas")
#: what a tap reads, by the task of the model it comes from: segmentation-only (a decode head),
#: detection-only (an FPN, a dense head, instances); the rest (fused levels, labels) both
SEGMENTATION_TAPS = ("logits", "head")
DETECTION_TAPS = ("neck", "head_cls", "head_reg", "box_dists", "positives", "num_positives",
                  "head_held", "head_tail", "box_decoder", "gt_boxes", "img_metas")


def tap_fits(tap: str | None, task: str) -> bool:
    """Whether a model of ``task`` (``segmentation`` or ``detection``) gives ``tap``."""
    other = DETECTION_TAPS if task == "segmentation" else SEGMENTATION_TAPS
    return (tap or "").rpartition(".")[2] not in other


#: facts of a model a loss's constructor may take (:attr:`Method.models`), as ``student.<fact>``
#: or ``teacher.<fact>``: the number of FPN levels, the dense head's anchors per location and
#: its box-distribution bins - 1 (None: box deltas); attributes of bcd.mm.detection.DetTaps
MODEL_FACTS = ("neck_levels", "num_anchors", "reg_max")
#: a ``channels`` value that is not an input's channel count: the dataset's number of classes
CLASSES = "classes"

# ----------------------------------------------------------------------------------------------
# JSON Schema fragments for the settings (plain dicts; see json-schema.org)
# ----------------------------------------------------------------------------------------------
WEIGHT = {"type": "number", "minimum": 0}
POSITIVE = {"type": "number", "exclusiveMinimum": 0}
INTEGER = {"type": "integer"}
LOSS_WEIGHT = {
    "description": (
        "a distillation term's weight; >= 0. 0 builds the term (its modules, connectors and "
        "random-number draws) but gives it no weight: a zero-weight control. To switch a term "
        "off, leave it out of the run."),
    "type": "number", "minimum": 0}


def at_least(minimum: int) -> dict:
    """An integer ``>= minimum``."""
    return {"type": "integer", "minimum": minimum}


def choice(*values, default=None, description: str | None = None) -> dict:
    """One of ``values``; ``default`` (the constructor's) is needed where the wiring reads the
    setting (:attr:`Method.inputs_by`)."""
    out = {"description": description} if description else {}
    out["enum"] = list(values)
    if default is not None:
        out["default"] = default
    return out


def temperature(*statistics, description: str = "") -> dict:
    """:func:`bcd.schedule.build_temperature`'s arguments (Sec. V-B), with these statistics."""
    return {"description": description or "bcd.schedule.AdaptiveTemperature arguments (Sec. V-B)",
            "type": "object", "additionalProperties": False,
            "properties": {"init": POSITIVE, "factor": {"type": "number", "minimum": 1},
                           "threshold": {"type": "number"}, "statistic": {"enum": list(statistics)},
                           "max_tau": POSITIVE}}


#: settings of the connectors that every method reading the fused features shares (Sec. IV-A);
#: allowed on such a method, read by the wiring, not passed to the loss; their defaults below
CONNECTOR_SETTINGS = {
    "fused_channels": {
        "description": ("width of the hierarchical connector's output (Sec. IV-A: 256); BD and "
                        "CD share one connector, so a run's values must agree"),
        "type": "integer", "minimum": 1},
    "teacher_fusion_seed": {
        "description": ("'run' (the run's seed) or an int >= 0 (one fixed frozen teacher-side "
                        "projection for every seed); BD and CD share the connector, so a run's "
                        "values must agree"),
        "anyOf": [{"const": "run"}, {"type": "integer", "minimum": 0}]},
}
#: Sec. IV-A: the concatenated features have 256 channels; the teacher-side projection's seed is
#: the run's
CONNECTOR_DEFAULTS = {"fused_channels": 256, "teacher_fusion_seed": "run"}


# ----------------------------------------------------------------------------------------------
# The declaration
# ----------------------------------------------------------------------------------------------
def _frozen(mapping) -> Mapping:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class Method:
    """What bcd needs to know about one distillation loss (see the module doc).

    Args:
        type: the params ``type``; the loss class's name in its module and in mmrazor's registry.
        inputs: ``forward`` argument -> tap (:data:`TAP_NAMES`) the distiller feeds it.
        settings: params key -> JSON Schema of its value, one per constructor argument a params
            file may set, besides ``loss_weight`` (every method has it, required) and the
            connectors' :data:`CONNECTOR_SETTINGS` (allowed when an input reads fused features).
            The constructor's signature holds the defaults.
        channels: constructor argument -> the ``inputs`` argument whose channel count it takes
            from the models, or :data:`CLASSES` (the number of classes).
        models: constructor argument -> a fact of one model (``"student.<fact>"`` or
            ``"teacher.<fact>"``, fact in :data:`MODEL_FACTS`) the wiring fills in; a model
            without that fact (a segmentor) is refused.
        inputs_by: inputs that depend on a setting: ``{setting: {value: {argument: tap or
            None}}}`` replaces (``None``: drops) those inputs; the setting's schema has the
            ``default``. E.g. CD's ``teacher_features`` picks its teacher-side tap.
        scheduled: r(t) scales it (BCD's own terms, Eq. 8); other terms keep their weight.
        same_logits_stride: it compares the two models' logits pixel by pixel without resizing:
            refused for a pair whose logits have different strides.
        external: ``"mmrazor"``: the class is mmrazor's own (declared here for the wiring).
        module: filled in by the catalog: the declaring module's name.
    """

    type: str
    inputs: Mapping[str, str]
    settings: Mapping[str, Mapping] = field(default_factory=dict)
    channels: Mapping[str, str] = field(default_factory=dict)
    models: Mapping[str, str] = field(default_factory=dict)
    inputs_by: Mapping[str, Mapping[str, Mapping[str, str | None]]] = field(default_factory=dict)
    scheduled: bool = False
    same_logits_stride: bool = False
    external: str | None = None
    module: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for name in ("inputs", "settings", "channels", "models", "inputs_by"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        where = f"Method {self.type!r}"
        if not isinstance(self.type, str) or not self.type.isidentifier():
            raise ValueError(f"{where}: type must be a class name")
        if not self.inputs:
            raise ValueError(f"{where}: inputs must name at least one tap")
        bad = sorted({t for t in self._every_tap() if t is not None and t not in TAP_NAMES})
        if bad:
            raise ValueError(f"{where}: unknown taps {bad} (known: {', '.join(TAP_NAMES)})")
        for key in ("type", "loss_weight", *CONNECTOR_SETTINGS):
            if key in self.settings:
                raise ValueError(f"{where}: {key!r} is every method's (or the connectors'); "
                                 "do not declare it in settings")
        for arg, ref in self.channels.items():
            if ref != CLASSES and ref not in self.inputs:
                raise ValueError(f"{where}: channels[{arg!r}] = {ref!r} is neither an input "
                                 f"({', '.join(self.inputs)}) nor {CLASSES!r}")
        for arg, ref in self.models.items():
            side, _, fact = str(ref).partition(".")
            if side not in ("student", "teacher") or fact not in MODEL_FACTS:
                raise ValueError(f"{where}: models[{arg!r}] = {ref!r} must be 'student.<fact>' or "
                                 f"'teacher.<fact>' with a fact in {', '.join(MODEL_FACTS)}")
            if arg in self.settings or arg in self.channels:
                raise ValueError(f"{where}: models[{arg!r}] is also a setting or a channel "
                                 "argument; the models fill it in")
        for setting, by_value in self.inputs_by.items():
            schema = self.settings.get(setting, {})
            if "default" not in schema or "enum" not in schema:
                raise ValueError(f"{where}: inputs_by[{setting!r}] needs a setting {setting!r} "
                                 "declared with choice(..., default=...)")
            extra = sorted(set(by_value) - set(schema["enum"]))
            if extra:
                raise ValueError(f"{where}: inputs_by[{setting!r}] has values {extra} that the "
                                 f"setting does not allow ({schema['enum']})")

    def _every_tap(self):
        yield from self.inputs.values()
        for by_value in self.inputs_by.values():
            for override in by_value.values():
                yield from override.values()

    @property
    def reads_fused(self) -> bool:
        """Reads the fused features, so shares the connectors (:data:`CONNECTOR_SETTINGS`)."""
        return any(t.endswith(".fused") for t in self.inputs.values())

    def allowed(self) -> dict[str, Mapping]:
        """Every params key of a ``methods.<name>`` entry of this type -> its schema."""
        out = {"type": {}, "loss_weight": LOSS_WEIGHT, **self.settings}
        if self.reads_fused:
            out.update(CONNECTOR_SETTINGS)
        return out

    def inputs_for(self, settings: Mapping[str, Any]) -> dict[str, str]:
        """``forward`` argument -> tap for a method with these settings (:attr:`inputs_by`)."""
        inputs = dict(self.inputs)
        for setting, by_value in self.inputs_by.items():
            schema = self.settings[setting]
            value = settings.get(setting, schema["default"])
            if value not in schema["enum"]:
                raise ValueError(f"{self.type}: {setting} must be one of "
                                 f"{sorted(schema['enum'])}, got {value!r}")
            for arg, tap in by_value.get(value, {}).items():
                if tap is None:
                    inputs.pop(arg, None)
                else:
                    inputs[arg] = tap
        return inputs

    def applies_to(self, task: str, settings: Mapping[str, Any] | None = None) -> bool:
        """Whether a method of this type with these settings reads only what models of ``task``
        (``segmentation`` or ``detection``) give (:data:`SEGMENTATION_TAPS`,
        :data:`DETECTION_TAPS`)."""
        return all(tap_fits(tap, task)
                   for tap in self.inputs_for(self.loss_args(settings or {})).values())

    def loss_args(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """The constructor arguments among ``settings`` (``type`` and the connectors' dropped)."""
        return {k: v for k, v in settings.items() if k != "type" and k not in CONNECTOR_SETTINGS}


# ----------------------------------------------------------------------------------------------
# The catalog: every METHOD of bcd/losses, read without importing the modules
# ----------------------------------------------------------------------------------------------
_SCOPE_NAMES = ("Method", "WEIGHT", "POSITIVE", "INTEGER", "LOSS_WEIGHT", "CLASSES", "at_least",
                "choice", "temperature")
_BUILTINS = {"dict": dict, "list": list, "tuple": tuple, "True": True, "False": False,
             "None": None}


def _literal_constants(tree: ast.Module) -> dict[str, Any]:
    """The file's top-level ``NAME = <literal>`` (and ``A, B = <literal>, <literal>``)."""
    out = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            continue
        target = node.targets[0]
        try:
            value = ast.literal_eval(node.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            continue
        if isinstance(target, ast.Name):
            out[target.id] = value
        elif (isinstance(target, ast.Tuple) and isinstance(value, tuple)
              and all(isinstance(e, ast.Name) for e in target.elts)
              and len(target.elts) == len(value)):
            out.update((e.id, v) for e, v in zip(target.elts, value))
    return out


def module_name(path: Path, root: Path = LOSSES) -> str:
    """``bcd/losses/baselines/tat.py`` -> ``bcd.losses.baselines.tat`` (``root``: the package
    folder the catalog reads, named by its path below the repository)."""
    root = root.resolve()
    base = root.relative_to(LOSSES.parent.parent).parts if root.is_relative_to(
        LOSSES.parent.parent) else (root.name,)
    rel = path.resolve().relative_to(root).with_suffix("").parts
    return ".".join(base + rel).removesuffix(".__init__")


def read_declaration(path: Path, root: Path = LOSSES) -> Method | None:
    """The ``METHOD`` that file ``path`` declares at top level (None if none), evaluated with
    this module's names and the file's literal constants only."""
    text = path.read_text(encoding="utf-8")
    if "METHOD" not in text:
        return None
    tree = ast.parse(text, str(path))
    node = next((n for n in tree.body if isinstance(n, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == "METHOD" for t in n.targets)), None)
    if node is None:
        return None
    scope = {**_literal_constants(tree), **{n: globals()[n] for n in _SCOPE_NAMES}}
    try:
        method = eval(compile(ast.Expression(node.value), str(path), "eval"),  # noqa: S307
                      {"__builtins__": _BUILTINS}, scope)
    except NameError as exc:
        raise ValueError(f"{path}: METHOD may use only literals, the file's literal constants and "
                         f"bcd.methods' {', '.join(_SCOPE_NAMES)} (it is read without importing "
                         f"the module): {exc}") from None
    if not isinstance(method, Method):
        raise ValueError(f"{path}: METHOD must be a bcd.methods.Method, "
                         f"got {type(method).__name__}")
    object.__setattr__(method, "module", module_name(path, root))
    return method


@lru_cache(maxsize=None)
def read_catalog(root: Path = LOSSES) -> tuple[Method, ...]:
    """Every ``METHOD`` declared in the ``.py`` files under ``root`` (read once per process)."""
    files = sorted((p for p in root.rglob("*.py") if "__pycache__" not in p.parts),
                   key=lambda p: (len(p.relative_to(root).parts), p.as_posix()))
    found: dict[str, Method] = {}
    for path in files:
        method = read_declaration(path, root)
        if method is None:
            continue
        if method.type in found:
            raise ValueError(f"loss type {method.type!r} is declared twice: in "
                             f"{found[method.type].module} and {method.module}")
        found[method.type] = method
    return tuple(found.values())


def declared() -> dict[str, Method]:
    """Every declared method by ``type``: BCD's terms (``bcd/losses/*.py``) first, then the
    baselines (``bcd/losses/baselines/``), each in file-name order."""
    return {m.type: m for m in read_catalog()}


def method(loss_type: str) -> Method:
    """The declaration of ``loss_type``; ``ValueError`` naming the known ones if none."""
    found = declared()
    if loss_type not in found:
        raise ValueError(f"unknown loss type {loss_type!r} (known: {sorted(found)})")
    return found[loss_type]


def scheduled(methods: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The names, among a params ``methods`` mapping, of the terms r(t) scales (Eq. 8)."""
    return [name for name, m in methods.items() if method(m["type"]).scheduled]


def schema() -> dict:
    """JSON Schema of one ``methods.<name>`` entry (the params schema's ``$defs/method``)."""
    found = declared()
    return _plain({
        "description": "one distillation term; the keys besides `type` are the loss's "
                       "constructor arguments (bcd.methods: each loss's declaration)",
        "type": "object",
        "required": ["type", "loss_weight"],
        "properties": {"type": {"enum": list(found)}},
        "allOf": [{"if": {"required": ["type"], "properties": {"type": {"const": t}}},
                   "then": {"additionalProperties": False, "properties": m.allowed()}}
                  for t, m in found.items()],
    })


def _plain(node):
    """Plain dicts/lists (the declarations hold read-only mappings) for jsonschema and YAML,
    without ``default`` (snakemake.utils.validate would fill it in, bcd.params does not: the
    constructors hold the defaults)."""
    if isinstance(node, Mapping):
        return {k: _plain(v) for k, v in node.items() if k != "default"}
    if isinstance(node, (list, tuple)):
        return [_plain(v) for v in node]
    return node
