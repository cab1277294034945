"""bcd.methods: one declaration per loss (`METHOD` next to the class) from which the params
schema, mmrazor's registry and the distiller's wiring derive."""
import importlib
import inspect

import pytest

from bcd import methods as M
from bcd import params as P

DECLARED = M.declared()


def test_every_loss_module_declares_and_reading_without_import_matches_the_import():
    assert {"BoundaryDistillLoss", "ContextDistillLoss", "PixelKDLoss", "ChannelWiseDivergence",
            "PairwiseSimilarityLoss", "IFVDLoss", "CrossImageRelationLoss", "BPKDLoss",
            "TATLoss", "SSTKDLoss", "FeatureL2Loss", "PKDLoss", "FGDLoss", "LDLoss",
            "CrossKDLoss"} <= set(DECLARED)
    for loss_type, method in DECLARED.items():
        module = importlib.import_module(method.module)
        assert module.METHOD == method, loss_type  # the AST reading = Python's
        if method.external is None:
            assert inspect.isclass(getattr(module, loss_type, None)), loss_type


@pytest.mark.parametrize("loss_type", sorted(t for t, m in DECLARED.items() if m.external is None))
def test_declaration_matches_the_constructor(loss_type):
    method = DECLARED[loss_type]
    cls = getattr(importlib.import_module(method.module), loss_type)
    params = inspect.signature(cls).parameters
    # every setting a params file may give, and every channel argument, is a constructor argument
    for arg in (*method.settings, *method.channels, *method.models, "loss_weight"):
        assert arg in params, (loss_type, arg)
    # the constructor's required arguments are all filled in from the models
    required = {k for k, p in params.items() if p.default is inspect.Parameter.empty}
    assert required <= set(method.channels) | set(method.models), (loss_type, required)
    # a default the wiring reads (inputs_by) is the constructor's
    for setting in method.inputs_by:
        assert method.settings[setting]["default"] == params[setting].default, setting


def test_inputs_follow_the_settings():
    bd, cd = DECLARED["BoundaryDistillLoss"], DECLARED["ContextDistillLoss"]
    assert bd.inputs_for({}) == dict(preds_S="student.fused", preds_T="teacher.fused",
                                     gt_seg="labels")
    for teacher in ("probe_pred", "prediction"):  # no labels, the teacher's logits instead
        assert bd.inputs_for({"teacher": teacher}) == dict(
            preds_S="student.fused", preds_T="teacher.fused", teacher_logits="teacher.logits")
    assert cd.inputs_for({"teacher_features": "head"})["preds_T"] == "teacher.head"
    assert cd.inputs_for({"teacher_features": "logits"})["preds_T"] == "teacher.logits"
    with pytest.raises(ValueError, match=r"ContextDistillLoss: teacher_features must be one of "
                                         r"\['fused', 'head', 'logits'\], got 'neck'"):
        cd.inputs_for({"teacher_features": "neck"})
    assert [t for t, m in DECLARED.items() if m.scheduled] == ["BoundaryDistillLoss",
                                                                "ContextDistillLoss"]
    assert M.scheduled({"x": {"type": "TATLoss"}, "b": {"type": "BoundaryDistillLoss"}}) == ["b"]
    with pytest.raises(ValueError, match=r"unknown loss type 'FooLoss' \(known: \["):
        M.method("FooLoss")


def test_the_params_schema_comes_from_the_declarations():
    method = P.schema()["$defs"]["method"]
    assert method["properties"]["type"]["enum"] == list(DECLARED)
    allowed = {b["if"]["properties"]["type"]["const"]: set(b["then"]["properties"])
               for b in method["allOf"]}
    assert allowed["PixelKDLoss"] == {"type", "loss_weight", "tau"}
    # the methods reading fused features also take the shared connectors' settings
    assert {"fused_channels", "teacher_fusion_seed", "form", "teacher"} <= allowed[
        "BoundaryDistillLoss"]
    assert "fused_channels" not in allowed["TATLoss"]


def test_a_new_file_is_found_and_bad_declarations_are_refused(tmp_path):
    (tmp_path / "helpers.py").write_text("X = 1\n")  # no METHOD: not a loss
    (tmp_path / "toy.py").write_text(
        "import torch\nfrom bcd.methods import Method, POSITIVE, choice\nKINDS = ('a', 'b')\n"
        "METHOD = Method(type='ToyLoss', inputs=dict(preds_S='student.logits', "
        "preds_T='teacher.logits'), settings=dict(tau=POSITIVE, kind=choice(*KINDS)))\n")
    (toy,) = M.read_catalog(tmp_path)  # torch is not imported: the file is only parsed
    assert (toy.type, toy.module) == ("ToyLoss", f"{tmp_path.name}.toy")
    assert toy.settings["kind"]["enum"] == ["a", "b"]
    (tmp_path / "uses_code.py").write_text(
        "def f():\n    return {}\nMETHOD = Method(type='Other', inputs=f())\n")
    M.read_catalog.cache_clear()
    with pytest.raises(ValueError, match=r"uses_code.py: METHOD may use only literals.*'f'"):
        M.read_catalog(tmp_path)
    M.read_catalog.cache_clear()


@pytest.mark.parametrize("kwargs,words", [
    (dict(inputs=dict(preds_S="student.backbone")), "unknown taps ['student.backbone']"),
    (dict(inputs={}), "inputs must name at least one tap"),
    (dict(inputs=dict(preds_S="student.head"), settings=dict(loss_weight={})),
     "'loss_weight' is every method's"),
    (dict(inputs=dict(preds_S="student.head"), channels=dict(in_channels="preds_T")),
     "channels['in_channels'] = 'preds_T' is neither an input"),
    (dict(inputs=dict(preds_S="student.neck"), models=dict(num_levels="student.width")),
     "models['num_levels'] = 'student.width' must be 'student.<fact>'"),
    (dict(inputs=dict(preds_S="student.neck"), settings=dict(num_levels=M.INTEGER),
          models=dict(num_levels="student.neck_levels")),
     "models['num_levels'] is also a setting"),
    (dict(inputs=dict(preds_S="student.head"), settings=dict(side=M.choice("a", "b")),
          inputs_by=dict(side=dict(a=dict(preds_S="student.low")))),
     "inputs_by['side'] needs a setting 'side' declared with choice(..., default=...)"),
])
def test_malformed_declarations_say_what_is_wrong(kwargs, words):
    with pytest.raises(ValueError) as info:
        M.Method(type="ToyLoss", **kwargs)
    assert words in str(info.value)


def test_reading_the_declarations_imports_no_torch():
    """params validation (and the Snakefile, dvc-yaml) read the catalog without the losses."""
    import subprocess
    import sys

    code = ("import sys, bcd.params as P, bcd.methods as M; M.declared(); P.schema(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=M.LOSSES.parents[1])


def test_a_method_applies_to_the_tasks_whose_models_give_what_it_reads():
    from bcd.methods import declared

    decl = declared()
    assert decl["FGDLoss"].applies_to("detection")            # the FPN
    assert not decl["FGDLoss"].applies_to("segmentation")
    assert decl["PixelKDLoss"].applies_to("segmentation")     # the decode head's logits
    assert not decl["PixelKDLoss"].applies_to("detection")
    bd = decl["BoundaryDistillLoss"]                           # the reading decides
    assert bd.applies_to("detection", {"teacher": "probe"})
    assert not bd.applies_to("detection", {"teacher": "prediction"})
    assert bd.applies_to("segmentation", {"teacher": "prediction"})
    assert decl["ContextDistillLoss"].applies_to("detection")  # fused levels only
