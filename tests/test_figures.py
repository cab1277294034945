"""bcd.figures: the difference marking and image choice on hand-made maps, the curve exports, every
drawing function on synthetic inputs (files written atomically, PNG/PDF readable), the figures
section's validation, and the whole stage on untrained models (no training)."""
from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bcd import figures as F
from bcd import dvcfile
from bcd import params as P

ROOT = Path(__file__).resolve().parents[1]
DEFAULT, MICRO = ROOT / "params" / "default.yaml", ROOT / "params" / "micro.yaml"
PALETTE = [[0, 0, 0], [230, 25, 75], [60, 180, 75]]
CLASSES = ("background", "a", "b")


# ----------------------------------------------------------------------------------------------
# Difference marking and image choice
# ----------------------------------------------------------------------------------------------
def test_difference_mask_hand_made():
    gt = np.array([[0, 1, 2, 255],
                   [1, 1, 0, 255]])
    student = np.array([[0, 2, 2, 0],
                        [0, 1, 1, 1]])
    distilled = np.array([[0, 1, 1, 0],
                          [2, 1, 2, 2]])
    want = np.array([[F.SAME, F.FIXED, F.BROKEN, F.SAME],
                     [F.CHANGED, F.SAME, F.CHANGED, F.CHANGED]], np.uint8)
    got = F.difference_mask(gt, student, distilled)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)
    # swapping the students swaps green and red, the rest stays
    swapped = F.difference_mask(gt, distilled, student)
    np.testing.assert_array_equal(swapped, [[F.SAME, F.BROKEN, F.FIXED, F.SAME],
                                            [F.CHANGED, F.SAME, F.CHANGED, F.CHANGED]])
    with pytest.raises(ValueError, match="shapes differ"):
        F.difference_mask(gt, student[:, :2], distilled)


def test_select_images_most_different_and_first():
    gts = [np.zeros((2, 2), int), np.zeros((2, 2), int), np.full((2, 2), 255), np.zeros((2, 2))]
    s = [np.zeros((2, 2), int)] * 4
    d = [np.array([[1, 0], [0, 0]]), np.ones((2, 2), int), np.ones((2, 2), int),
         np.array([[0, 1], [0, 0]])]
    # image 2 differs only on unlabelled pixels; images 0 and 3 tie (file order)
    assert F.select_images(gts, s, d, 3) == [1, 0, 3]
    assert F.select_images(gts, s, d, 10) == [1, 0, 3, 2]
    assert F.select_images(gts, s, d, 2, "first") == [0, 1]
    with pytest.raises(ValueError, match="unknown selection"):
        F.select_images(gts, s, d, 2, "best")


def test_colorize_and_edges():
    rgb = F.colorize(np.array([[0, 1], [2, 255]]), PALETTE)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert rgb[0, 1].tolist() == PALETTE[1] and rgb[1, 1].tolist() == [255, 255, 255]
    edges = F.label_edges(np.array([[0, 0, 1], [0, 0, 1], [2, 2, 2]]))
    np.testing.assert_array_equal(edges, [[0, 1, 0], [1, 1, 1], [0, 0, 0]])


# ----------------------------------------------------------------------------------------------
# Training logs -> flat CSV (dvc plots)
# ----------------------------------------------------------------------------------------------
def _log(distilled: bool, iters: int = 6) -> dict:
    train = []
    for it in range(1, iters + 1):
        row = {"iter": it, "loss": 3.0 / it, "lr": 0.01}
        prefix = "student." if distilled else ""
        row[f"{prefix}decode.loss_ce"] = 2.0 / it
        row[f"{prefix}aux.loss_ce"] = 0.8 / it
        if distilled:
            row.update({"distill.loss_bd": 0.5, "distill.loss_cd": 0.3 / it, "loss_bd_tau": 1.0,
                        "loss_cd_tau": 1.0 + 0.05 * it, "loss_bd_kd": 0.01,
                        "loss_bd_probe": 0.49, "r_t": 1 - (it - 1) / iters})
        train.append(row)
    return {"train": train, "val": [{"iter": iters, "mIoU": 20.0 + distilled, "aAcc": 50.0,
                                     "IoU.background": 60.0}]}


def test_flat_columns_and_curve_columns():
    flat = F.flatten_log(_log(True))
    assert {"decode_loss_ce", "aux_loss_ce", "distill_loss_bd", "r_t", "loss_cd_tau"} <= set(
        flat["train"][0])
    assert flat["val"][0]["IoU_background"] == 60.0
    with pytest.raises(ValueError, match="lists 'train' and 'val'"):
        F.flatten_log({"train": []})
    cfg = P.load_params([DEFAULT])
    assert F.curve_columns(cfg, "r18")["train"] == ["iter", "loss", "decode_loss_ce", "lr"]
    assert F.curve_columns(cfg, "r18-bcd")["train"] == [
        "iter", "loss", "decode_loss_ce", "distill_loss_bd", "distill_loss_cd", "loss_bd_tau",
        "loss_cd_tau", "r_t", "lr"]
    assert "r_t" not in F.curve_columns(cfg, "r18-bd-cd")["train"]
    assert F.curve_columns(cfg, "r18-kd")["train"] == ["iter", "loss", "decode_loss_ce",
                                                       "distill_loss_kd", "lr"]


def test_written_csv_has_every_predicted_column(tmp_path):
    path = F.write_rows_csv(tmp_path / "x.csv", [{"iter": 1, "loss": 2.0, "extra": 3}],
                            ["iter", "loss", "r_t"])
    rows = list(csv.DictReader(path.open()))
    assert rows == [{"iter": "1", "loss": "2.0", "r_t": "", "extra": "3"}]
    assert [p.name for p in tmp_path.iterdir()] == ["x.csv"]


def test_dvc_plots_name_only_exported_columns_and_stage_outputs():
    cfg = P.load_params([DEFAULT])
    plots = F.dvc_plots(cfg)
    figures = next(s for s in P.stages(cfg) if s.name == "figures")
    named = [next(iter(p)) for p in plots if isinstance(p, dict)]
    assert named == ["train-loss", "student-ce", "distill-losses", "temperature", "r_t",
                     "val-miou", "table1-miou"]
    seed = P.figures_spec(cfg)["seed"]
    exports = {str(p): (run, part) for run in P.figures_runs(cfg)
               for part, p in P.curve_paths(cfg, run, seed).items()}
    for plot in plots:
        if isinstance(plot, str):  # an image
            assert plot in figures.outs and plot.endswith(".png")
            continue
        (spec,) = plot.values()
        for path, cols in spec["y"].items():
            if path in exports:
                run, part = exports[path]
                assert path in figures.outs
                assert set(cols) <= set(F.curve_columns(cfg, run)[part]), (path, cols)
            else:
                assert path == str(P.table_paths(cfg, "table1")["csv"]) and path in figures.deps


# ----------------------------------------------------------------------------------------------
# Drawing: every function on synthetic inputs
# ----------------------------------------------------------------------------------------------
def _check_written(paths):
    from PIL import Image

    for path in paths:
        path = Path(path)
        assert path.is_file() and path.stat().st_size > 1000, path
        if path.suffix == ".png":
            with Image.open(path) as img:
                img.verify()
            with Image.open(path) as img:
                assert img.size[0] >= 600 and img.size[1] >= 300, img.size
        else:
            assert path.read_bytes()[:5] == b"%PDF-"
        leftovers = [p.name for p in path.parent.iterdir() if ".tmp" in p.name]
        assert not leftovers, leftovers


def _paths(tmp_path, name):
    return {fmt: tmp_path / f"{name}.{fmt}" for fmt in ("png", "pdf")}


def _maps(seed, shape=(24, 32)):
    rng = np.random.default_rng(seed)
    gt = np.zeros(shape, int)
    gt[4:14, 5:20] = 1
    gt[10:20, 16:28] = 2
    gt[0, :4] = 255
    noisy = lambda p: np.where(rng.random(shape) < p, rng.integers(0, 3, shape), gt)  # noqa: E731
    image = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
    return {"name": f"val {seed:05d}", "image": image, "gt": gt, "teacher": noisy(0.05),
            "student": noisy(0.3), "distilled": noisy(0.2)}


def test_plot_qualitative(tmp_path):
    samples = [_maps(i) for i in range(3)]
    fig = F.plot_qualitative(samples, {"teacher": "Teacher\nT", "student": "Student\nS",
                                       "distilled": "Student + BCD\nS+BCD"}, CLASSES, PALETTE)
    axes = fig.get_axes()
    assert len(axes) == 3 * 6
    assert [a.get_title() for a in axes[:6]] == ["Image", "Ground truth", "Teacher\nT",
                                                 "Student\nS", "Student + BCD\nS+BCD",
                                                 "Student + BCD\nvs student"]
    assert axes[5].get_xlabel().endswith("grey pixels")
    legends = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert "background" in legends and any(t.startswith("green:") for t in legends)
    _check_written(F.save_figure(fig, _paths(tmp_path, "qualitative")))


def test_plot_boundary(tmp_path):
    rng = np.random.default_rng(0)
    samples = [{**_maps(i), "bpkd_edge": rng.random((3, 4)) > 0.5,
                "boundary_teacher": rng.random((3, 4)), "boundary_student": rng.random((3, 4))}
               for i in range(2)]
    fig = F.plot_boundary(samples, CLASSES, PALETTE)
    titles = [a.get_title() for a in fig.get_axes()[:5]]
    assert titles[2].startswith("BPKD edge mask") and "3x4" in titles[3]
    _check_written(F.save_figure(fig, _paths(tmp_path, "boundary")))
    # without the student's map: one column fewer
    fig = F.plot_boundary([{k: v for k, v in s.items() if k != "boundary_student"}
                           for s in samples], CLASSES, PALETTE)
    assert len([a for a in fig.get_axes() if a.get_label() != "<colorbar>"]) == 2 * 4


def test_plot_training_curves(tmp_path):
    logs = [("S: student", F.flatten_log(_log(False))), ("+BCD", F.flatten_log(_log(True)))]
    fig = F.plot_training_curves(logs, "curves")
    axes = fig.get_axes()
    assert [a.get_xlabel() for a in axes] == ["iteration"] * 6
    assert all(a.get_ylabel() for a in axes)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["S: student", "+BCD"]
    by_title = {a.get_title(): a for a in axes}
    assert len(by_title["Total training loss"].get_lines()) == 2
    assert len(by_title["Distillation terms (weighted)"].get_lines()) == 2  # bd, cd of +BCD
    assert len(by_title["Loss-weight decay r(t)"].get_lines()) == 1
    _check_written(F.save_figure(fig, _paths(tmp_path, "training_curves")))
    # a plain run alone: the distillation panels say so instead of staying blank
    fig = F.plot_training_curves(logs[:1])
    texts = [t.get_text() for a in fig.get_axes() for t in a.texts]
    assert texts.count("not logged by these runs") == 3


def _table() -> pd.DataFrame:
    from bcd import tables

    rows = []
    for i, (method, role) in enumerate([("T: big", "teacher"), ("S: small", "student"),
                                        ("+BD", "student"), ("+BD+CD+WD", "student")]):
        row = {c: math.nan for c in tables.COLUMNS}
        row.update(method=method, role=role, run=method, paper_miou=70.0 + i,
                   ours_miou_mean=40.0 + i, ours_miou_std=0.5 if i else math.nan,
                   ours_miou_per_seed="39.5;40.5" if i else "40.0",
                   ours_boundary_iou_mean=20.0 + i, ours_boundary_iou_std=0.3,
                   ours_fragmentation_mean=10.0 - i, ours_fragmentation_std=1.0)
        row.update(PAIRED.get(method, {}))
        rows.append(row)
    return pd.DataFrame(rows, columns=tables.COLUMNS)


# paired gains of the rows over "S: small" (its reference): one n.s., one gain
PAIRED = {
    "+BD": dict(paired_reference="S: small", paired_n=3, paired_diff_mean=0.5,
                paired_diff_ci_low=-0.25, paired_diff_ci_high=1.25,
                paired_diff_per_seed="0.0;0.5;1.0", verdict="n.s."),
    "+BD+CD+WD": dict(paired_reference="S: small", paired_n=3, paired_diff_mean=2.0,
                      paired_diff_ci_low=1.5, paired_diff_ci_high=2.5,
                      paired_diff_per_seed="1.8;2.0;2.2", verdict="gain"),
}


def test_plot_ablation(tmp_path):
    df = _table()
    df.to_csv(tmp_path / "table.csv", index=False)
    fig = F.plot_ablation(pd.read_csv(tmp_path / "table.csv"), "caption")
    axes = fig.get_axes()
    assert [a.get_title() for a in axes] == ["Ours: mIoU", "Ours: Boundary IoU",
                                             "Ours: fragmentation (lower is better)",
                                             "Paper (reported): mIoU", F.PAIRED_TITLE]
    assert all(a.get_ylabel() for a in axes)
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["S: small", "+BD", "+BD+CD+WD"]
    bars = [p.get_height() for p in axes[0].patches]
    assert bars == pytest.approx([41.0, 42.0, 43.0])
    legend = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert "teacher 40.00" in legend and "mean ± std over seeds" in legend
    _check_written(F.save_figure(fig, _paths(tmp_path, "ablation")))
    # a table from metrics without the quality columns: those panels say so
    old = df.drop(columns=["ours_boundary_iou_mean", "ours_fragmentation_mean"])
    texts = [t.get_text() for a in F.plot_ablation(old).get_axes() for t in a.texts]
    assert sum("no values in column" in t for t in texts) == 2


def test_ablation_draws_the_paired_intervals(tmp_path):
    from matplotlib.container import ErrorbarContainer

    df = _table()
    df.to_csv(tmp_path / "table.csv", index=False)
    ax = F.plot_ablation(pd.read_csv(tmp_path / "table.csv")).get_axes()[4]
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    by_label = {c.get_label(): c for c in bars}
    assert set(by_label) == {"gain: CI above 0", "n.s.: CI holds 0"}
    # x: the rows S: small (0), +BD (1), +BD+CD+WD (2); each bar spans the CI
    (ns_segments,) = [lc.get_segments() for lc in by_label["n.s.: CI holds 0"].lines[2]]
    np.testing.assert_allclose(ns_segments, [[[1, -0.25], [1, 1.25]]])
    (gain_segments,) = [lc.get_segments() for lc in by_label["gain: CI above 0"].lines[2]]
    np.testing.assert_allclose(gain_segments, [[[2, 1.5], [2, 2.5]]])
    np.testing.assert_allclose(by_label["gain: CI above 0"].lines[0].get_xydata(), [[2, 2.0]])
    # the verdicts are written beside the bars, the reference row sits at 0
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["+0.50 n.s.", "+2.00 gain"]
    ref = next(line for line in ax.get_lines() if line.get_label() == "reference row")
    np.testing.assert_allclose(ref.get_xydata(), [[0, 0.0]])
    seeds = [c for c in ax.collections if c.get_label() == "seeds (per-seed Δ)"]
    assert len(seeds) == 1 and len(seeds[0].get_offsets()) == 3
    lo, hi = ax.get_ylim()
    assert lo < -0.25 and hi > 2.5
    # one seed: a hollow marker, no bar; a table without paired columns: the panel says so
    one = df.copy()
    one.loc[3, ["paired_diff_ci_low", "paired_diff_ci_high"]] = math.nan
    one.loc[3, "verdict"] = "n/a"
    ax = F.plot_ablation(one).get_axes()[4]
    assert [c.get_label() for c in ax.containers if isinstance(c, ErrorbarContainer)] == [
        "n.s.: CI holds 0"]
    assert any(line.get_label() == "one seed: no interval (n/a)" for line in ax.get_lines())
    old = df.drop(columns=[c for c in df.columns if c.startswith("paired_") or c == "verdict"])
    texts = [t.get_text() for t in F.plot_ablation(old).get_axes()[4].texts]
    assert any("no paired differences" in t for t in texts)


def test_a_failed_save_leaves_no_file(tmp_path, monkeypatch):
    fig = F.plot_training_curves([("a", F.flatten_log(_log(False)))])

    def broken(path, **kw):
        Path(path).write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(RuntimeError):
        F.save_figure(fig, _paths(tmp_path, "x"))
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# The figures section
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    ({"table": "nope"}, "figures.table: unknown table 'nope'"),
    ({"student": "r18-kd"}, "figures.student: run 'r18-kd' is not a row of table 'table1'"),
    ({"seed": 7}, "figures.seed: seed 7 is not one of seeds"),
    ({"table": "table3", "distilled": "r18-kd"},
     "figures.distilled: run 'r18-kd' has no BoundaryDistillLoss term"),
    ({"select": "best"}, "figures.select"),
])
def test_bad_figures_section_is_refused(tmp_path, change, message):
    import yaml

    overlay = tmp_path / "bad.yaml"
    overlay.write_text(yaml.safe_dump({"figures": change}))
    with pytest.raises(P.ParamsError, match=message.replace("(", r"\(")) as info:
        P.load_params([DEFAULT, overlay])
    assert str(overlay) in str(info.value)


def test_unset_runs_and_seed_follow_the_table(tmp_path):
    import yaml

    cfg = P.load_params([DEFAULT])
    assert {k: P.figures_spec(cfg)[k] for k in ("table", "student", "distilled", "seed")} == {
        "table": "table1", "student": "r18", "distilled": "r18-bcd", "seed": 0}
    overlay = tmp_path / "o.yaml"
    overlay.write_text(yaml.safe_dump({"seeds": [5, 6], "tables": {"table1": {"rows": [
        {"run": "r18-bd", "label": "+BD"}, {"run": "r18", "label": "S"},
        {"run": "r18-bd-cd", "label": "+BD+CD"}, {"run": "r18-cd", "label": "+CD"}]}}}))
    spec = P.figures_spec(P.load_params([DEFAULT, overlay]))
    assert (spec["student"], spec["distilled"], spec["seed"]) == ("r18", "r18-bd-cd", 5)
    # a table without a plain row or without a BD row: no figures stage (like an unlisted run)
    overlay.write_text(yaml.safe_dump({"tables": {"table1": {"rows": [
        {"run": "r18", "label": "S"}, {"run": "r18-cd", "label": "+CD"}]}}}))
    cfg = P.load_params([DEFAULT, overlay])
    assert P.figures_spec(cfg) is None and "figures" not in {s.name for s in P.stages(cfg)}
    with pytest.raises(ValueError, match="set figures.student and figures.distilled"):
        F.make_figures(cfg)


def test_figures_stage_and_no_section_no_stage():
    cfg = P.load_params([DEFAULT, MICRO])
    stage = next(s for s in P.stages(cfg) if s.name == "figures")
    assert stage.cmd == P.command(cfg, "figures") and " figures --params " in stage.cmd
    assert "runs/micro/r18-bcd/seed0/distill_heads.pth" in stage.deps
    assert "results/micro/tables/table1.csv" in stage.deps and "bcd/figures.py" in stage.deps
    assert "results/micro/figures/qualitative.png" in stage.outs and not stage.cache
    assert "results/micro/plots/r18-bcd-seed0.csv" in stage.outs
    assert set(stage.params) == {"figures", "methods.bpkd", *P.data_keys(cfg)}
    no_figures = {k: v for k, v in copy.deepcopy(cfg).items() if k != "figures"}
    assert "figures" not in {s.name for s in P.stages(no_figures)}
    assert "plots" not in dvcfile.dvc_yaml(no_figures)


# ----------------------------------------------------------------------------------------------
# The whole stage on untrained models (inference, boundary heads, every file)
# ----------------------------------------------------------------------------------------------
def test_figures_command_on_untrained_models(tmp_path, monkeypatch):
    pytest.importorskip("mmrazor", reason="the OpenMMLab stack is installed by tools/setup_env.sh")
    import yaml
    from mmengine.config import ConfigDict
    from mmrazor.registry import MODELS as RAZOR
    from mmseg.registry import MODELS

    import bcd.mm  # noqa: F401
    from bcd import cli, tables
    from bcd.data.synthetic import generate
    from bcd.mm import configs
    from bcd.weights import save_weights

    monkeypatch.chdir(tmp_path)
    overlay = tmp_path / "here.yaml"
    overlay.write_text(yaml.safe_dump({"paths": {"data": "data", "runs": "runs",
                                                 "results": "results"},
                                       "data": {"shapes": {"num_train": 1, "num_val": 1,
                                                           "num_test": 3}},
                                       "figures": {"num_images": 2, "boundary_images": 1}}))
    files = [str(DEFAULT), str(MICRO), str(overlay)]
    cfg = P.load_params(files)
    data = P.data_spec(cfg)
    generate(P.data_dir(cfg), seed=0, num_train=1, num_val=1, num_test=3, height=32, width=32)
    nc, crop = configs.num_classes(data), configs.crop_size(data)

    def write_metrics(path, kind, name, seed, miou):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"kind": kind, "name": name, "seed": seed, "mIoU": miou,
                                    "params": 10, "flops": 10.0, "input_shape": [3, 32, 32]}))

    teacher = cfg["tables"]["table1"]["teacher"]
    t = P.teacher_paths(cfg, teacher)
    save_weights(MODELS.build(ConfigDict(configs.segmentor(
        P.resolve_teacher(cfg, teacher)["model"], nc, crop))), t["model"], {})
    write_metrics(t["metrics"], "teacher", teacher, None, 30.0)
    for run in P.figures_runs(cfg):
        spec, p = P.resolve_run(cfg, run), P.run_paths(cfg, run, 0)
        save_weights(MODELS.build(ConfigDict(configs.segmentor(spec["student"]["model"], nc,
                                                               crop))), p["model"], {})
        heads = (RAZOR.build(configs.distiller(spec["methods"], spec["student"]["model"],
                                               spec["teacher"]["model"], num_classes=nc))
                 if spec["methods"] else None)
        save_weights(heads if heads is not None else __import__("torch").nn.Module(),
                     p["distill_heads"], {})
        p["train_log"].write_text(json.dumps(_log(bool(spec["methods"]))))
        write_metrics(p["metrics"], "student", run, 0, 20.0)
    tables.write_table(cfg, "table1")

    assert cli.main(["figures", *[a for f in files for a in ("--params", f)]]) == 0
    outputs = P.figures_outputs(cfg)
    _check_written([o for o in outputs if not o.endswith(".csv")])
    rows = list(csv.DictReader(open(P.curve_paths(cfg, "r18-bcd", 0)["train"])))
    assert len(rows) == 6 and rows[-1]["r_t"] and rows[0]["distill_loss_bd"] == "0.5"
    assert set(F.curve_columns(cfg, "r18-bcd")["train"]) <= set(rows[0])
    assert all(Path(o).is_file() for o in outputs)

    # a run trained before distill_heads.pth existed: a clear message, not a traceback
    P.run_paths(cfg, "r18-bcd", 0)["distill_heads"].unlink()
    with pytest.raises(FileNotFoundError, match="distill_heads.pth is missing"):
        F.make_figures(cfg)
