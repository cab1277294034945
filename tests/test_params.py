"""bcd.params: validation (file + key path in every message), overlays, resolution, stages."""
from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import pytest
import yaml

from bcd import dvcfile
from bcd import params as P

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "params" / "default.yaml"
MICRO = ROOT / "params" / "micro.yaml"


def _default() -> dict:
    return yaml.safe_load(DEFAULT.read_text())


def _write(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _del(path):
    def edit(cfg):
        node = cfg
        for part in path[:-1]:
            node = node[part]
        del node[path[-1]]
    return edit


def _set(path, value):
    def edit(cfg):
        node = cfg
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
    return edit


def _add_run(name):
    def edit(cfg):
        cfg["runs"][name] = {"student": "pspnet-r18"}
    return edit


# (id, edit of params/default.yaml, key path the message must name, words it must contain)
MALFORMED = [
    ("unknown-top-level-key", _set(("epochs",), 3), "epochs", "unknown key"),
    ("unknown-nested-key", _set(("methods", "bd", "lossweight"), 1.0), "methods.bd.lossweight",
     "unknown key"),
    ("unknown-deep-key", _set(("methods", "bd", "temperature", "tau"), 1.0),
     "methods.bd.temperature.tau", "unknown key"),
    ("table-num-seeds-zero", _set(("tables", "table1", "num_seeds"), 0),
     "tables.table1.num_seeds", "minimum"),
    ("key-of-another-loss", _set(("methods", "cd", "radius"), 4), "methods.cd.radius",
     "unknown key"),
    ("wrong-type-int", _set(("train", "student", "iters"), "many"), "train.student.iters",
     "not of type 'integer'"),
    ("wrong-type-bool-as-int", _set(("train", "student", "iters"), True), "train.student.iters",
     "not of type 'integer'"),
    ("wrong-type-list", _set(("seeds",), "0"), "seeds", "not of type 'array'"),
    ("wrong-type-section", _set(("methods", "bd"), 10.0), "methods.bd", "not of type 'object'"),
    ("negative-weight", _set(("methods", "bd", "loss_weight"), -1.0), "methods.bd.loss_weight",
     "-1.0 is less than the minimum of 0"),
    ("negative-probe-weight", _set(("methods", "bd", "teacher_probe_weight"), -0.5),
     "methods.bd.teacher_probe_weight", "less than the minimum of 0"),
    ("nan-weight", _set(("methods", "cd", "loss_weight"), math.nan), "methods.cd.loss_weight",
     "not a finite number"),
    ("inf-weight-decay", _set(("train", "teacher", "weight_decay"), math.inf),
     "train.teacher.weight_decay", "not a finite number"),
    ("missing-field", _del(("methods", "bd", "loss_weight")), "methods.bd.loss_weight",
     "missing"),
    ("missing-section", _del(("paths",)), "paths", "missing"),
    ("missing-run-student", _del(("runs", "r18", "student")), "runs.r18.student", "missing"),
    ("unknown-method", _set(("runs", "r18-bd", "distill"), ["bdx"]), "runs.r18-bd.distill[0]",
     "unknown method 'bdx'"),
    ("unknown-model", _set(("runs", "r18", "student"), "pspnet-r19"), "runs.r18.student",
     "unknown model 'pspnet-r19'"),
    ("unknown-teacher", _set(("runs", "r18-cd", "teacher"), "nobody"), "runs.r18-cd.teacher",
     "unknown teacher 'nobody'"),
    ("unknown-teacher-model", _set(("teachers", "pspnet-r101", "model"), "vit"),
     "teachers.pspnet-r101.model", "unknown model 'vit'"),
    ("unknown-table-teacher", _set(("tables", "table1", "teacher"), "nobody"),
     "tables.table1.teacher", "unknown teacher"),
    ("unknown-table-run", _set(("tables", "table1", "rows", 1, "run"), "r18-xx"),
     "tables.table1.rows[1].run", "unknown run 'r18-xx'"),
    ("duplicate-table-run", _set(("tables", "table1", "rows", 1, "run"), "r18"),
     "tables.table1.rows[1].run", "listed twice"),
    ("unknown-paper-method", _set(("tables", "table1", "rows", 1, "paper_method"), "+XY"),
     "tables.table1.rows[1].paper_method", "matches no mIoU row"),
    ("unknown-paper-table", _set(("tables", "table1", "paper_table"), "IX"),
     "tables.table1.paper_table", "no paper table 'IX'"),
    ("distill-without-teacher", _del(("runs", "r18-bd", "teacher")), "runs.r18-bd.distill",
     "needs a teacher"),
    ("teacher-without-distill", _del(("runs", "r18-bd", "distill")), "runs.r18-bd.teacher",
     "no distill"),
    ("schedule-without-distill", _set(("runs", "r18", "weight_decay_schedule"), True),
     "runs.r18.weight_decay_schedule", "needs distill"),
    ("empty-distill", _set(("runs", "r18-bd", "distill"), []), "runs.r18-bd.distill",
     "non-empty"),
    ("empty-seeds", _set(("seeds",), []), "seeds", "non-empty"),
    ("duplicate-seeds", _set(("seeds",), [0, 0]), "seeds", "non-unique"),
    ("negative-seed", _set(("seeds",), [-1]), "seeds[0]", "less than the minimum of 0"),
    ("zero-iters", _set(("train", "student", "iters"), 0), "train.student.iters",
     "0 is less than the minimum of 1"),
    ("zero-batch-size", _set(("train", "teacher", "batch_size"), 0), "train.teacher.batch_size",
     "less than the minimum of 1"),
    ("zero-lr", _set(("train", "student", "lr"), 0.0), "train.student.lr",
     "less than or equal to the minimum of 0"),
    ("unknown-enum", _set(("methods", "cd", "align"), "conv3x3"), "methods.cd.align",
     "is not one of"),
    ("unknown-loss-type", _set(("methods", "bd", "type"), "FooLoss"), "methods.bd.type",
     "is not one of"),
    ("unknown-arch", _set(("models", "pspnet-r18", "arch"), "unet"), "models.pspnet-r18.arch",
     "is not one of"),
    ("name-with-dot", _add_run("r18.v2"), "runs.r18.v2", "invalid name 'r18.v2'"),
    ("name-upper-case", _set(("models", "PSPNet"), {"arch": "pspnet", "depth": 18,
                                                    "base_channels": 8}),
     "models.PSPNet", "invalid name"),
    ("reserved-run-name", _add_run("teachers"), "runs.teachers", "reserved"),
    ("absolute-path", _set(("paths", "runs"), "/tmp/runs"), "paths.runs",
     "is not a folder inside the repository"),
    ("parent-path", _set(("paths", "data"), "../data"), "paths.data",
     "is not a folder inside the repository"),
    ("empty-runs", _set(("runs",), {}), "runs", "must not be empty"),
    ("shapes-eval-split-unknown", _set(("data", "shapes", "eval_split"), "train"),
     "data.shapes.eval_split", "is not one of"),
    ("shapes-num-test-negative", _set(("data", "shapes", "num_test"), -1),
     "data.shapes.num_test", "less than the minimum of 0"),
    ("shapes-num-test-not-int", _set(("data", "shapes", "num_test"), 2.5),
     "data.shapes.num_test", "not of type 'integer'"),
    ("shapes-test-split-without-num-test", _del(("data", "shapes", "num_test")),
     "data.shapes.num_test", "no test images (num_test absent), but the tables report the test"),
    ("shapes-test-split-of-zero-images", _set(("data", "shapes", "num_test"), 0),
     "data.shapes.num_test", "no test images (num_test 0)"),
]


@pytest.mark.parametrize("edit,keypath,words", [c[1:] for c in MALFORMED],
                         ids=[c[0] for c in MALFORMED])
def test_malformed_params_name_file_and_key(tmp_path, edit, keypath, words):
    cfg = _default()
    edit(cfg)
    bad = _write(tmp_path / "bad.yaml", cfg)
    with pytest.raises(P.ParamsError) as info:
        P.load_params([bad])
    lines = str(info.value).splitlines()
    expected = f"{bad}: {keypath}: "
    hits = [line for line in lines if line.startswith(expected)]
    assert hits, f"no line starts with {expected!r}:\n{info.value}"
    assert any(words in line for line in hits), f"{words!r} not in {hits}"
    assert (str(bad), keypath) in {(f, k) for f, k, _ in info.value.errors}


def test_the_example_message_from_the_docs(tmp_path):
    cfg = _default()
    cfg["methods"]["bd"]["loss_weight"] = -1.0
    bad = _write(tmp_path / "default.yaml", cfg)
    with pytest.raises(P.ParamsError, match=r"^.*default\.yaml: methods\.bd\.loss_weight: -1\.0 "
                                            r"is less than the minimum of 0$"):
        P.load_params([bad])


@pytest.mark.parametrize("text,words", [
    (None, "cannot read params file"),
    ("seeds: [0, 1\n", "invalid YAML"),
    ("seeds: [0]\nseeds: [1]\n", "duplicate key 'seeds'"),
    ("- 1\n- 2\n", "top level must be a mapping"),
])
def test_unreadable_files_are_named(tmp_path, text, words):
    path = tmp_path / "p.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(P.ParamsError) as info:
        P.load_params([DEFAULT, path])
    assert str(info.value).startswith(f"{path}: ") and words in str(info.value)


def test_no_files_is_an_error():
    with pytest.raises(P.ParamsError, match="no params file"):
        P.load_params([])


def test_several_problems_are_all_reported(tmp_path):
    cfg = _default()
    cfg["methods"]["bd"]["loss_weight"] = -1.0
    cfg["train"]["student"]["iters"] = 0
    with pytest.raises(P.ParamsError) as info:
        P.load_params([_write(tmp_path / "p.yaml", cfg)])
    assert {k for _, k, _ in info.value.errors} == {"methods.bd.loss_weight",
                                                     "train.student.iters"}


# ----------------------------------------------------------------------------------------------
# Overlays
# ----------------------------------------------------------------------------------------------
def test_overlay_precedence(tmp_path):
    overlay = _write(tmp_path / "o.yaml", {
        "seeds": [5],
        "methods": {"bd": {"loss_weight": 2.0, "temperature": {"factor": 1.1}}},
        "tables": {"table1": {"rows": [{"run": "r18", "label": "S"}]}},
    })
    cfg = P.load_params([DEFAULT, overlay])
    base = _default()
    assert cfg["seeds"] == [5]                                      # lists replace
    assert cfg["methods"]["bd"]["loss_weight"] == 2.0               # scalars replace
    assert cfg["methods"]["bd"]["radius"] == base["methods"]["bd"]["radius"]   # dicts merge
    assert cfg["methods"]["bd"]["temperature"] == {**base["methods"]["bd"]["temperature"],
                                                   "factor": 1.1}
    assert cfg["tables"]["table1"]["rows"] == [{"run": "r18", "label": "S"}]
    assert cfg["tables"]["table1"]["caption"] == base["tables"]["table1"]["caption"]
    assert P.files_of(cfg) == [str(DEFAULT), str(overlay)]
    assert cfg["_files"] == P.files_of(cfg)


def test_later_overlay_wins(tmp_path):
    a = _write(tmp_path / "a.yaml", {"methods": {"bd": {"loss_weight": 1.0}}})
    b = _write(tmp_path / "b.yaml", {"methods": {"bd": {"loss_weight": 3.0}}})
    assert P.load_params([DEFAULT, a, b])["methods"]["bd"]["loss_weight"] == 3.0
    assert P.load_params([DEFAULT, b, a])["methods"]["bd"]["loss_weight"] == 1.0


def test_error_names_the_overlay_that_set_the_key(tmp_path):
    good = _write(tmp_path / "good.yaml", {"seeds": [0]})
    bad = _write(tmp_path / "bad.yaml", {"methods": {"bd": {"loss_weight": -1.0}}})
    with pytest.raises(P.ParamsError) as info:
        P.load_params([DEFAULT, bad, good])
    assert str(info.value) == f"{bad}: methods.bd.loss_weight: -1.0 is less than the minimum of 0"


def test_error_names_the_base_when_the_overlay_did_not_touch_the_key(tmp_path):
    cfg = _default()
    cfg["train"]["student"]["iters"] = 0
    base = _write(tmp_path / "base.yaml", cfg)
    overlay = _write(tmp_path / "overlay.yaml", {"train": {"student": {"lr": 0.1}}})
    with pytest.raises(P.ParamsError) as info:
        P.load_params([base, overlay])
    assert str(info.value).startswith(f"{base}: train.student.iters: ")


def test_missing_key_is_blamed_on_the_file_that_defines_its_parent(tmp_path):
    overlay = _write(tmp_path / "overlay.yaml", {"methods": {"crd": {"type": "ContextDistillLoss"}}})
    with pytest.raises(P.ParamsError) as info:
        P.load_params([DEFAULT, overlay])
    assert str(info.value) == f"{overlay}: methods.crd.loss_weight: missing (required)"


def test_a_reference_broken_by_an_overlay_names_the_overlay(tmp_path):
    overlay = _write(tmp_path / "overlay.yaml", {"runs": {"r18-cd": {"distill": ["crd"]}}})
    with pytest.raises(P.ParamsError) as info:
        P.load_params([DEFAULT, overlay])
    assert str(info.value).startswith(f"{overlay}: runs.r18-cd.distill[0]: unknown method 'crd'")


def test_micro_profile():
    cfg = P.load_params([DEFAULT, MICRO])
    assert cfg["seeds"] == [0]
    assert cfg["paths"] == {"data": "data/micro", "runs": "runs/micro", "results": "results/micro",
                            "datasets": "data/embedded-datasets"}  # the default's, unused
    shapes = cfg["data"]["shapes"]
    assert (shapes["num_train"], shapes["num_val"], shapes["num_test"]) == (16, 8, 8)
    assert (cfg["data"]["height"], cfg["data"]["width"]) == (32, 32)
    for role in ("teacher", "student"):
        assert cfg["train"][role]["iters"] == cfg["train"][role]["val_interval"] == 4
    assert list(cfg["tables"]) == ["table1", "table3", "table4"]
    assert [r["run"] for r in cfg["tables"]["table1"]["rows"]] == ["r18", "r18-bcd"]
    assert P.runs_used(cfg) == ["r18", "r18-bcd", "r18-ifvd-bcd", "dlv3p-r18-tat"]


def test_shapes_tables_report_test_and_val_is_kept_reachable(tmp_path):
    cfg = P.load_params([DEFAULT])
    assert cfg["data"]["shapes"]["eval_split"] == "test" and cfg["data"]["shapes"]["num_test"] > 0
    # without a test split, reporting val is still a valid profile
    old = _default()
    del old["data"]["shapes"]["num_test"]
    old["data"]["shapes"]["eval_split"] = "val"
    assert "num_test" not in P.load_params([_write(tmp_path / "old.yaml", old)])["data"]["shapes"]


def test_validate_config_matches_load_params():
    merged = P.deep_merge(_default(), yaml.safe_load(MICRO.read_text()))
    assert P.validate_config(merged, [DEFAULT, MICRO]) == P.load_params([DEFAULT, MICRO])


def test_validate_config_rejects_values_not_in_the_files():
    merged = P.deep_merge(_default(), yaml.safe_load(MICRO.read_text()))
    merged["methods"]["bd"]["loss_weight"] = 1.0  # as `snakemake --config` would
    with pytest.raises(P.ParamsError, match=r"methods\.bd\.loss_weight: .*--configfile"):
        P.validate_config(merged, [DEFAULT, MICRO])


def test_schema_has_no_defaults():
    """Defaults would be filled in by snakemake.utils.validate only, not by bcd.params."""
    def walk(node):
        if isinstance(node, dict):
            assert "default" not in node, node
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(P.schema())


# ----------------------------------------------------------------------------------------------
# Resolution
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cfg():
    """params/default.yaml loaded as the workflow does: from the repository root, relative path."""
    old = os.getcwd()
    os.chdir(ROOT)
    try:
        return P.load_params(["params/default.yaml"])
    finally:
        os.chdir(old)


def test_resolve_run_plain_student(cfg):
    spec = P.resolve_run(cfg, "r18")
    assert spec["name"] == "r18"
    assert spec["student"] == {"model_name": "pspnet-r18", "model": cfg["models"]["pspnet-r18"]}
    assert spec["teacher"] is None and spec["methods"] == {}
    assert spec["weight_decay_schedule"] is False
    assert spec["train"] == cfg["train"]["student"] and spec["data"] == cfg["data"]


def test_resolve_run_bcd(cfg):
    spec = P.resolve_run(cfg, "r18-bcd")
    assert spec["teacher"] == {"name": "pspnet-r101", "model_name": "pspnet-r101",
                               "model": cfg["models"]["pspnet-r101"], "seed": 0,
                               "train": cfg["train"]["teacher"]}
    assert list(spec["methods"]) == ["bd", "cd"]
    assert spec["methods"]["bd"] == cfg["methods"]["bd"]
    assert spec["methods"]["cd"]["type"] == "ContextDistillLoss"
    assert spec["weight_decay_schedule"] is True


def test_resolve_teacher(cfg):
    spec = P.resolve_teacher(cfg, "pspnet-r101")
    assert spec == {"name": "pspnet-r101", "model_name": "pspnet-r101",
                    "model": cfg["models"]["pspnet-r101"], "seed": 0,
                    "train": cfg["train"]["teacher"], "data": cfg["data"]}


def test_resolved_specs_are_copies(cfg):
    spec = P.resolve_run(cfg, "r18-bd")
    spec["methods"]["bd"]["loss_weight"] = 123.0
    spec["train"]["iters"] = 1
    assert cfg["methods"]["bd"]["loss_weight"] != 123.0 and cfg["train"]["student"]["iters"] != 1


def test_unknown_run_is_a_params_error(cfg):
    with pytest.raises(P.ParamsError, match=r"runs\.r99: not defined"):
        P.resolve_run(cfg, "r99")


def test_bd_weight_change_affects_exactly_the_runs_using_bd(cfg):
    changed = copy.deepcopy(cfg)
    changed["methods"]["bd"]["loss_weight"] = 5.0
    affected = {r for r in cfg["runs"] if P.resolve_run(cfg, r) != P.resolve_run(changed, r)}
    assert affected == {r for r, spec in cfg["runs"].items() if "bd" in spec.get("distill", [])}
    assert {"r18-bd", "r18-bd-cd", "r18-bcd", "r18-tat-bcd", "dlv3p-r18-bcd"} <= affected
    assert not affected & {"r18", "r18-cd", "r18-kd", "dlv3p-r18-tat"}
    assert P.resolve_teacher(cfg, "pspnet-r101") == P.resolve_teacher(changed, "pspnet-r101")


def _numeric_leaves(node, path=()):
    if isinstance(node, bool):
        yield path, (not node)
    elif isinstance(node, (int, float)):
        yield path, node + 1
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _numeric_leaves(v, path + (k,))


def _under(path, keys):
    return any(path[:len(k.split("."))] == tuple(k.split(".")) for k in keys)


@pytest.mark.parametrize("kind", ["run", "teacher", "evaluate-run", "evaluate-teacher", "table"])
def test_param_keys_match_resolution(cfg, kind):
    """Perturbing any number or flag of the params changes a stage's resolved spec exactly when
    it lies under one of the stage's dvc.yaml param keys."""
    base = {k: v for k, v in cfg.items() if k != "_files"}
    if kind in ("run", "evaluate-run"):
        names = list(cfg["runs"])
    elif kind == "table":
        names = list(cfg["tables"])
    else:
        names = list(cfg["teachers"])
    resolve = {"run": P.resolve_run, "teacher": P.resolve_teacher, "table": P.resolve_table,
               "evaluate-run": lambda c, n: P.resolve_evaluate(c, run=n),
               "evaluate-teacher": lambda c, n: P.resolve_evaluate(c, teacher=n)}[kind]
    keys_of = {"run": P.param_keys_for_run, "teacher": P.param_keys_for_teacher,
               "table": P.param_keys_for_table,
               "evaluate-run": lambda c, n: P.param_keys_for_evaluate(c, run=n),
               "evaluate-teacher": lambda c, n: P.param_keys_for_evaluate(c, teacher=n)}[kind]
    leaves = list(_numeric_leaves(base))
    assert len(leaves) > 20
    for name in names:
        keys = keys_of(cfg, name)
        before = resolve(cfg, name)
        for path, value in leaves:
            changed = copy.deepcopy(cfg)
            node = changed
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = value
            assert (resolve(changed, name) != before) == _under(path, keys), (name, path, keys)


# ----------------------------------------------------------------------------------------------
# Paths and stages
# ----------------------------------------------------------------------------------------------
def test_paths(cfg):
    assert P.data_dir(cfg) == Path("data/embedded")
    t = P.teacher_paths(cfg, "pspnet-r101")
    assert t["model"] == Path("runs/embedded/teachers/pspnet-r101/model.pth")
    assert t["metrics"] == Path("runs/embedded/teachers/pspnet-r101/metrics.json")
    r = P.run_paths(cfg, "r18-bcd", 2)
    assert r == {"dir": Path("runs/embedded/r18-bcd/seed2"),
                 "model": Path("runs/embedded/r18-bcd/seed2/model.pth"),
                 "train_log": Path("runs/embedded/r18-bcd/seed2/train_log.json"),
                 "metrics": Path("runs/embedded/r18-bcd/seed2/metrics.json"),
                 "summary": Path("runs/embedded/r18-bcd/seed2/summary.json"),
                 "distill_heads": Path("runs/embedded/r18-bcd/seed2/distill_heads.pth")}
    assert P.table_paths(cfg, "table1") == {"csv": Path("results/tables/table1.csv"),
                                            "tex": Path("results/tables/table1.tex")}


def test_stages(cfg):
    stages = {s.name: s for s in P.stages(cfg)}
    kinds = [n.split("-")[0] if not n.startswith("evaluate-teacher") else "evaluate-teacher"
             for n in stages]
    assert {k: kinds.count(k) for k in set(kinds)} == {
        "data": 2, "teacher": 5, "evaluate-teacher": 5, "train": 93 + 32, "evaluate": 93 + 32,
        "table": 4, "figures": 1}   # Table V: 3 teachers, 16 runs x 2 seeds, on its own data
    train = stages["train-r18-bcd-seed1"]
    assert train.cmd == ("python -m bcd train --params params/default.yaml "
                         "--run r18-bcd --seed 1")
    assert train.deps[:2] == ("data/embedded", "runs/embedded/teachers/pspnet-r101/model.pth")
    assert "bcd/losses" in train.deps and "bcd/connectors.py" in train.deps
    assert train.outs == ("runs/embedded/r18-bcd/seed1/model.pth",
                          "runs/embedded/r18-bcd/seed1/train_log.json",
                          "runs/embedded/r18-bcd/seed1/distill_heads.pth")
    assert set(train.params) == set(P.param_keys_for_run(cfg, "r18-bcd"))
    assert "runs/embedded/teachers/pspnet-r101/model.pth" not in stages["train-r18-seed0"].deps
    ev = stages["evaluate-r18-seed0"]
    # the full record is an out; DVC's metrics file is its short summary (`dvc metrics show`)
    assert ev.outs == ("runs/embedded/r18/seed0/metrics.json",) and not ev.cache
    assert ev.metrics == ("runs/embedded/r18/seed0/summary.json",)
    assert "runs/embedded/r18/seed0/model.pth" in ev.deps
    table = stages["table-table1"]
    assert len([d for d in table.deps if d.endswith("metrics.json")]) == 1 + 5 * 3
    table5 = [d for d in stages["table-table5"].deps if d.endswith("metrics.json")]
    assert len(table5) == 3 + 16 * 2 and not any("seed2" in d for d in table5)
    from bcd.reference import REFERENCE_CSV

    assert any(REFERENCE_CSV == d or REFERENCE_CSV.startswith(d + "/") for d in table.deps)
    assert not table.cache


def test_dvc_params_track_base_keys_and_whole_overlays():
    cfg = P.load_params([DEFAULT, MICRO])
    doc = dvcfile.dvc_yaml(cfg)["stages"]
    assert doc["train-r18-bcd-seed0"]["params"] == [
        {str(DEFAULT): P.param_keys_for_run(cfg, "r18-bcd")}, {str(MICRO): None}]
    assert doc["table-table1"]["params"] == [{str(DEFAULT): ["tables.table1", "seeds"]},
                                             {str(MICRO): None}]
    assert f"- {MICRO}:\n" in dvcfile.dvc_yaml_text(cfg)


def test_a_table_with_its_own_seeds_trains_its_rows_with_those_only(tmp_path):
    base = _default()
    base["seeds"] = [0, 2, 1]
    base["tables"]["table4"]["num_seeds"] = 2
    base["tables"]["table1"]["num_seeds"] = 1
    cfg = P.load_params([_write(tmp_path / "p.yaml", base)])
    only4 = base["tables"]["table4"]["rows"][0]["run"]
    assert P.table_seeds(cfg, "table4") == [0, 2] and P.table_seeds(cfg, "table3") == [0, 2, 1]
    assert P.run_seeds(cfg, only4) == [0, 2]
    assert P.run_seeds(cfg, "r18-bd") == [0]            # table1 only
    assert P.run_seeds(cfg, "r18") == [0, 2, 1]         # table1 and table3: every seed asked
    trains = {s.name for s in P.stages(cfg) if s.name.startswith(f"train-{only4}-seed")}
    assert trains == {P.stage_name("train", only4, 0), P.stage_name("train", only4, 2)}
    read = {str(f) for f in P.table_metrics(cfg, "table1")}
    assert str(P.run_paths(cfg, "r18", 0)["metrics"]) in read
    assert str(P.run_paths(cfg, "r18", 2)["metrics"]) not in read
    # a run's resolved spec (what a rerun compares) does not depend on its seeds
    assert P.resolve_run(cfg, "r18") == P.resolve_run(P.load_params([DEFAULT]), "r18")
    # an overlay with fewer seeds than num_seeds: all of them
    one = _write(tmp_path / "one.yaml", {"seeds": [5]})
    assert P.table_seeds(P.load_params([DEFAULT, one]), "table5") == [5]


def test_an_overlay_drops_a_table_by_setting_it_to_null(tmp_path):
    over = _write(tmp_path / "o.yaml", {"tables": {"table4": None}})
    cfg = P.load_params([DEFAULT, over])
    assert "table4" not in cfg["tables"] and "table3" in cfg["tables"]
    assert not any(s.name.startswith("train-dlv3p") for s in P.stages(cfg))
