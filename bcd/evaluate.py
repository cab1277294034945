"""Stage command that evaluates a trained model: mIoU (mmseg's IoU metric through mmengine's test
loop), per-class IoU, Boundary/trimap IoU and connectivity (bcd.metrics), and inference
Params/FLOPs (mmengine's complexity counter).

Writes ``metrics.json`` atomically; the table stage reads nothing else.

Training evaluates its model once more at the end, in its own process (:func:`evaluate_after_training`),
and leaves the result in its work dir (``work/evaluation.json``) under a key made of everything
the evaluation depends on: the weights' sha256, the evaluation spec (model, data, ``evaluation``
settings: :func:`bcd.params.resolve_evaluate`, carried by :class:`bcd.params.EvaluationSpec`) and the sha256 of every evaluation code file. The
evaluate stage writes that result when the key matches, without importing torch or building a
model (a Python start-up with mmseg costs ~10 s per run on 2 CPU cores, the evaluation itself
~2 s); any difference, or ``--recompute``, evaluates from scratch. The metrics are the same
either way: both paths run :func:`measure`.
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path

from bcd import params as P
from bcd.atomic import write_json_atomic
from bcd.provenance import file_sha256

_REPO = Path(__file__).resolve().parent.parent
CACHE_NAME = "evaluation.json"  # in the run's (or teacher's) work dir, written by training


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


def quality_settings(evaluation) -> dict:
    """Boundary IoU dilation ratio and trimap widths from the params' ``evaluation`` section."""
    ev = evaluation or {}
    return {"dilation_ratio": float(ev.get("dilation_ratio", 0.02)),
            "trimap_widths": [int(w) for w in ev.get("trimap_widths", (1, 3, 5))]}


def evaluation_key(job: P.EvaluationSpec, ckpt) -> str:
    """What an evaluation's result depends on: weights, evaluation spec, evaluation code."""
    files = P.code_files([str(_REPO / f) for f in P.EVALUATE_CODE])
    code = {str(Path(f).relative_to(_REPO)): file_sha256(f) for f in files}
    blob = {"weights": file_sha256(ckpt), "spec": job.settings, "code": code}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def _cache_file(paths) -> Path:
    return Path(paths["dir"]) / "work" / CACHE_NAME


def _weights(job: P.EvaluationSpec) -> Path:
    ckpt = Path(job.paths["model"])
    if not ckpt.is_file():
        raise FileNotFoundError(f"model weights {ckpt} are missing; run the "
                                f"{'teacher' if job.kind == 'teacher' else 'train'} stage first")
    return ckpt


def evaluate(job: P.EvaluationSpec, *, recompute: bool = False) -> dict:
    """Write the model's ``metrics.json``: training's own evaluation when its key matches,
    else measured now (see the module docstring). ``job``: :func:`bcd.params.evaluation_job`."""
    ckpt = _weights(job)
    if not recompute:
        try:
            cached = json.loads(_cache_file(job.paths).read_text())
        except (OSError, ValueError):
            cached = None
        if (isinstance(cached, dict) and isinstance(cached.get("metrics"), dict)
                and cached.get("key") == evaluation_key(job, ckpt)):
            out = dict(cached["metrics"], evaluated="at the end of training (same weights, "
                                                    "evaluation settings and code)")
            _write(job.paths, out)
            return out
    out = measure(job)
    _write(job.paths, out)
    return out


#: the headline numbers of ``summary.json`` (what ``dvc metrics show`` lists per evaluation)
SUMMARY_KEYS = ("mIoU", "mBoundaryIoU", "params", "flops")


def summary(metrics: dict) -> dict:
    """A metrics file's headline numbers: mIoU and Boundary IoU (%), parameters and FLOPs."""
    return {k: metrics[k] for k in SUMMARY_KEYS if k in metrics}


def _write(paths, metrics: dict) -> None:
    write_json_atomic(paths["metrics"], metrics)
    write_json_atomic(paths["summary"], summary(metrics))


def evaluate_after_training(job: P.EvaluationSpec) -> None:
    """Evaluate a model its training just wrote and keep the result for the evaluate stage.

    A failure here only costs the shortcut: it is reported, and the evaluate stage evaluates
    from scratch (and raises there, where the stage's log shows it).
    """
    cache = _cache_file(job.paths)
    cache.unlink(missing_ok=True)
    try:
        ckpt = _weights(job)
        key = evaluation_key(job, ckpt)
        out = measure(job)
    except Exception as err:  # noqa: BLE001  (reported; the evaluate stage retries)
        print(f"bcd: evaluation at the end of training failed ({type(err).__name__}: {err}); "
              "the evaluate stage will evaluate from scratch")
        return
    write_json_atomic(cache, {"key": key, "metrics": out})


def measure(job: P.EvaluationSpec) -> dict:
    """Evaluate the model's weights on the evaluation split: the metrics dict."""
    from mmengine.runner import Runner

    from bcd.mm import configs
    from bcd.runtime import require_dataset, setup_threads
    from bcd.weights import check_state_dict, load_meta, load_weights

    setup_threads(job.threads)
    paths, kind, name, seed = job.paths, job.kind, job.name, job.seed
    # plain copies: they go into metrics.json and the mm configs
    data, model_spec = copy.deepcopy(job.settings["data"]), copy.deepcopy(job.model)
    evaluation = copy.deepcopy(job.settings["evaluation"])
    root = require_dataset(job.data)
    ckpt = _weights(job)
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
                                                 **quality_settings(evaluation))],
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
    meta = load_meta(ckpt)
    out = {
        "kind": kind, "name": name, "seed": seed if kind == "student" else None,
        "model": job.model_name, "model_spec": model_spec, "split": split,
        "mIoU": float(results["mIoU"]), "mAcc": float(results.get("mAcc", float("nan"))),
        "aAcc": float(results["aAcc"]), "per_class_iou": per_class,
        # boundary / trimap / connectivity (bcd.metrics; docs/method.md): means, then per class
        **{k: v for k, v in quality.items() if "." not in k},
        "per_class_quality": {k: v for k, v in quality.items() if "." in k},
        "quality_settings": quality_settings(evaluation),
        **complexity(model_cfg, (3, *size)), "input_shape": [3, *size], "iters": job.iters,
        "eval_seconds": round(time.time() - t0, 1),
        # what the evaluated weights were made from (bcd.provenance) and their own hash
        "weights_sha256": file_sha256(ckpt),
        "provenance": meta.get("provenance"),
        "kept": meta.get("kept"),  # train.select: the last or the best-val weights
        "train_cost": train_cost(meta),
    }
    return out


#: Keys of the weights' meta that metrics.json carries as ``train_cost``: what
#: bcd.train.training_cost measured, and how the run was made (processes, resumed).
COST_KEYS = ("seconds", "seconds_per_iter", "peak_rss_mb", "peak_cuda_mb", "processes",
             "resumed")


def train_cost(meta: dict) -> dict | None:
    """What training the weights cost, from their meta; None for weights saved before bcd
    recorded it (or foreign weights). A key the meta lacks is None (``seconds`` is older than
    the others)."""
    if not any(k in meta for k in COST_KEYS[:4]):
        return None
    return {k: meta.get(k) for k in COST_KEYS}
