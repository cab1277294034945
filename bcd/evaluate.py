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


def detector_complexity(model_cfg: dict, input_shape) -> dict:
    """Params and FLOPs of a detector's inference path on one ``(3, H, W)`` image: backbone,
    FPN and heads in mmdet's tensor mode (Cascade: the RPN's proposals, then every stage's box
    and mask heads on them), without the final box decoding and NMS, which the counter does
    not see. The weights are a seeded random initialisation (the RPN's proposal count, and so
    Cascade's count, depends on them, as it does on the image). Counted on a batch of two
    copies of the image and halved (every counted operation is per image): with one image a
    narrow head's GroupNorm (32 groups of one channel) refuses the 1 x 1 top FPN level of a
    small image."""
    import torch
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmengine.analysis import get_model_complexity_info
    from mmengine.config import ConfigDict

    _, h, w = input_shape
    with torch.random.fork_rng():
        torch.manual_seed(0)
        detector = MODELS.build(ConfigDict(copy.deepcopy(model_cfg))).eval()
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), batch_input_shape=(h, w),
                scale_factor=(1.0, 1.0))

    class TensorPath(torch.nn.Module):  # the counter calls forward(image)
        def __init__(self):
            super().__init__()
            self.detector = detector

        def forward(self, images):
            samples = [DetDataSample(metainfo=meta) for _ in images]
            return self.detector(images, samples, mode="tensor")

    images = torch.zeros(2, *input_shape)
    info = get_model_complexity_info(TensorPath().eval(), inputs=(images,), show_table=False,
                                     show_arch=False)
    return {"params": int(info["params"]), "flops": float(info["flops"]) / 2}


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
SUMMARY_KEYS = ("mIoU", "mBoundaryIoU", "bbox_mAP", "segm_mAP", "params", "flops")


def summary(metrics: dict) -> dict:
    """A metrics file's headline numbers: mIoU and Boundary IoU (%; detectors: box and mask
    mAP), parameters and FLOPs."""
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


def run_test_loop(test_cfg: dict, ckpt) -> dict:
    """mmengine's test loop of ``test_cfg`` on the weights ``ckpt`` (checked against the model,
    loaded strictly): the evaluators' results."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    from bcd.weights import check_state_dict, load_weights

    runner = Runner.from_cfg(Config(test_cfg, format_python_code=False))
    state = load_weights(ckpt)
    check_state_dict(runner.model, state, ckpt)
    runner.model.load_state_dict(state, strict=True)
    return runner.test()


def measure(job: P.EvaluationSpec) -> dict:
    """Evaluate the model's weights on the evaluation split: the metrics dict."""
    from bcd.mm import configs
    from bcd.runtime import require_dataset, setup_threads
    from bcd.weights import load_meta

    setup_threads(job.threads)
    paths, kind, name, seed = job.paths, job.kind, job.name, job.seed
    # plain copies: they go into metrics.json and the mm configs
    data, model_spec = copy.deepcopy(job.settings["data"]), copy.deepcopy(job.model)
    evaluation = copy.deepcopy(job.settings["evaluation"])
    root = require_dataset(job.data)
    ckpt = _weights(job)
    if configs.is_detection(data):
        return _measure_detector(job, data, model_spec, root, ckpt)
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
    t0 = time.time()
    results = run_test_loop(test_cfg, ckpt)
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


#: COCO's numbers of metrics.json (percent) per mmdet CocoMetric metric: AP over IoU
#: 0.50:0.95, at 0.50 and 0.75, and on small, medium and large objects
COCO_ITEMS = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")


def coco_percent(results: dict, metric: str) -> dict:
    """``{metric}_{item}`` in percent from mmdet's ``coco/{metric}_{item}`` fractions (rounded
    by mmdet to 3 decimals). COCO's -1 (no ground truth of that size) becomes None; a model
    that detects nothing on the split (mmdet then reports no numbers) scores 0."""
    out = {}
    for item in COCO_ITEMS:
        value = results.get(f"coco/{metric}_{item}", 0.0)
        out[f"{metric}_{item}"] = None if value < 0 else round(100.0 * float(value), 4)
    return out


def _measure_detector(job: P.EvaluationSpec, data: dict, model_spec: dict, root, ckpt) -> dict:
    """:func:`measure` for a detector: mmdet's COCO metric on the evaluation split through
    mmengine's test loop (box mAP; mask mAP for models with masks), Params/FLOPs of
    :func:`detector_complexity` at the evaluation size."""
    from bcd.mm import configs, detection
    from bcd.weights import load_meta

    paths, split, size = job.paths, configs.eval_split(data), configs.eval_size(data)
    masks = detection.has_masks(model_spec)
    model_cfg = detection.detector(model_spec, configs.num_classes(data))
    work = Path(paths["dir"]) / "eval_work"
    test_cfg = dict(
        default_scope="mmdet", custom_imports=dict(imports=["bcd.mm"], allow_failed_imports=False),
        model=model_cfg, work_dir=str(work),
        test_dataloader=dict(batch_size=configs.eval_batch_size(data), num_workers=0,
                             persistent_workers=False,
                             sampler=dict(type="DefaultSampler", shuffle=False),
                             dataset=configs.dataset(data, root, split, train=False)),
        test_evaluator=configs.evaluator(data, root, split, masks),
        test_cfg=dict(type="TestLoop"), env_cfg=dict(cudnn_benchmark=False),
        log_level="WARNING", default_hooks=dict(), custom_hooks=[],
        visualizer=configs.visualizer(data))
    t0 = time.time()
    results = run_test_loop(test_cfg, ckpt)
    meta = load_meta(ckpt)
    scores = coco_percent(results, "bbox")
    if masks:
        scores.update(coco_percent(results, "segm"))
    return {
        "kind": job.kind, "name": job.name, "seed": job.seed if job.kind == "student" else None,
        "model": job.model_name, "model_spec": model_spec, "task": "detection", "split": split,
        **scores,
        **detector_complexity(model_cfg, (3, *size)), "input_shape": [3, *size],
        "iters": job.iters, "eval_seconds": round(time.time() - t0, 1),
        "weights_sha256": file_sha256(ckpt), "provenance": meta.get("provenance"),
        "kept": meta.get("kept"), "train_cost": train_cost(meta),
    }


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
