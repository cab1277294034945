"""Stage command that evaluates a trained model: mIoU (mmseg's IoU metric through mmengine's test
loop), per-class IoU, and inference Params/FLOPs (mmengine's complexity counter).

Writes ``metrics.json`` atomically; the table stage reads nothing else.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

from bcd import params as P
from bcd.atomic import write_json_atomic
from bcd.provenance import file_sha256
from bcd.train import _setup_threads, check_state_dict, load_meta, load_weights, require_dataset


def complexity(model_cfg: dict, input_shape) -> dict:
    """Params and FLOPs of the inference path (the auxiliary head is training-only, so excluded)."""
    from mmengine.analysis import get_model_complexity_info
    from mmseg.registry import MODELS

    cfg = copy.deepcopy(model_cfg)
    cfg.pop("auxiliary_head", None)
    model = MODELS.build(cfg).eval()
    info = get_model_complexity_info(model, input_shape=tuple(input_shape), show_table=False,
                                     show_arch=False)
    return {"params": int(info["params"]), "flops": float(info["flops"])}


def quality_settings(cfg) -> dict:
    """Boundary IoU dilation ratio and trimap widths from the params (``evaluation``)."""
    ev = cfg.get("evaluation") or {}
    return {"dilation_ratio": float(ev.get("dilation_ratio", 0.02)),
            "trimap_widths": [int(w) for w in ev.get("trimap_widths", (1, 3, 5))]}


def evaluate(cfg, *, run: str | None = None, seed: int | None = None,
             teacher: str | None = None) -> dict:
    from mmengine.runner import Runner

    from bcd.mm import configs

    _setup_threads()
    if (run is None) == (teacher is None):
        raise ValueError("evaluate needs exactly one of --run (with --seed) or --teacher")
    if teacher is not None:
        spec = P.resolve_teacher(cfg, teacher)
        paths, model_spec, kind, name = P.teacher_paths(cfg, teacher), spec["model"], "teacher", teacher
        model_name, iters = spec["model_name"], spec["train"]["iters"]
    else:
        if seed is None:
            raise ValueError("evaluate --run needs --seed")
        spec = P.resolve_run(cfg, run)
        paths, model_spec, kind, name = (P.run_paths(cfg, run, seed), spec["student"]["model"],
                                         "student", run)
        model_name, iters = spec["student"]["model_name"], spec["train"]["iters"]
    data = spec["data"]
    root = require_dataset(cfg, P.dataset_of(cfg, run=run, teacher=teacher))
    ckpt = Path(paths["model"])
    if not ckpt.is_file():
        raise FileNotFoundError(f"model weights {ckpt} are missing; run the "
                                f"{'teacher' if teacher else 'train'} stage first")
    crop = configs.crop_size(data)
    split, size = configs.eval_split(data), configs.eval_size(data)
    model_cfg = configs.segmentor(model_spec, configs.num_classes(data), crop)
    base = configs.runner_config(model=model_cfg, data=data, data_root=root,
                                 train=dict(iters=1, batch_size=1, lr=0.0, momentum=0.0,
                                            weight_decay=0.0),
                                 work_dir=Path(paths["dir"]) / "eval_work", seed=0,
                                 log_file=Path(paths["dir"]) / "eval_work" / "unused.json",
                                 scope="mmseg")
    test_cfg = dict(
        default_scope="mmseg", custom_imports=base.custom_imports, model=model_cfg,
        work_dir=base.work_dir,
        test_dataloader=dict(base.val_dataloader,
                             dataset=configs.dataset(data, root, split, train=False)),
        test_evaluator=[base.val_evaluator, dict(type="mmseg.SegQualityMetric",
                                                 **quality_settings(cfg))],
        test_cfg=dict(type="TestLoop"),
        env_cfg=base.env_cfg, log_level="WARNING", default_hooks=dict(), custom_hooks=[],
        visualizer=base.visualizer)
    from mmengine.config import Config

    t0 = time.time()
    runner = Runner.from_cfg(Config(test_cfg, format_python_code=False))
    state = load_weights(ckpt)
    check_state_dict(runner.model, state, ckpt)
    runner.model.load_state_dict(state, strict=True)
    results = runner.test()
    per_class = {k[4:]: v for k, v in results.items() if k.startswith("IoU.")}
    quality = {k.split("/", 1)[1]: v for k, v in results.items() if k.startswith("quality/")}
    out = {
        "kind": kind, "name": name, "seed": seed if kind == "student" else None,
        "model": model_name, "model_spec": model_spec, "split": split,
        "mIoU": float(results["mIoU"]), "mAcc": float(results.get("mAcc", float("nan"))),
        "aAcc": float(results["aAcc"]), "per_class_iou": per_class,
        # boundary / trimap / connectivity (bcd.metrics; docs/method.md): means, then per class
        **{k: v for k, v in quality.items() if "." not in k},
        "per_class_quality": {k: v for k, v in quality.items() if "." in k},
        "quality_settings": quality_settings(cfg),
        **complexity(model_cfg, (3, *size)), "input_shape": [3, *size], "iters": iters,
        "eval_seconds": round(time.time() - t0, 1),
        # what the evaluated weights were made from (bcd.provenance) and their own hash
        "weights_sha256": file_sha256(ckpt),
        "provenance": load_meta(ckpt).get("provenance"),
    }
    write_json_atomic(paths["metrics"], out)
    return out
