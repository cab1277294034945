"""BD's gradient on the student backbone relative to the segmentation CE's, per BD reading.

    python tools/bd_grad_shares.py --params params/default.yaml --run r18-bd \
        [--teacher-ckpt runs/embedded/teachers/pspnet-r101/model.pth] [--weight 10]

(from the repository root; ``PYTHONPATH=.`` if ``bcd`` is installed from another checkout)

For every (form, teacher) reading of BD (docs/method.md, Eq. 2-3) the run's student is built
with the same seed (identical student, connector and BD heads), one fixed batch of the train
split (8 images at the default) goes through the whole mmrazor step, and the script prints
``||d loss_bd / d theta|| / ||d loss_ce / d theta||`` over the student backbone's parameters
``theta`` at initialisation (iteration 1, tau = 1), ``loss_ce`` being the decode head's CE
(``student.decode.loss_ce``). BD's probe never reaches the student, so ``distill.loss_bd``'s
gradient on the backbone is its KD term's. The teacher is put entirely in eval mode (no dropout).
Without ``--teacher-ckpt`` the teacher has random weights (said in the output).
Also printed: the adaptive temperature's statistics on this step's teacher side at tau = 1 and,
for ``relative_range``, the tau at which its rule (x 1.05 while > 0.5) would stop on this batch.
A stop-gap until ``bcd.bench grads`` exists (issue 13).
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import tempfile
from pathlib import Path

FORMS = ("affinity", "line", "spatial")
TEACHERS = ("probe", "probe_pred", "prediction")


def _batch(cfg, spec, size: int, seed: int):
    from mmengine.dataset import pseudo_collate
    from mmseg.registry import DATASETS

    from bcd import params as P
    from bcd.mm import configs

    data = spec["data"]
    ds = DATASETS.build(configs.dataset(data, str(P.data_dir(cfg)), "train", train=False))
    return pseudo_collate([ds[i] for i in range(seed * size, seed * size + size)])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", action="append", required=True)
    ap.add_argument("--run", default="r18-bd")
    ap.add_argument("--teacher-ckpt", default=None, help="default: random teacher weights")
    ap.add_argument("--weight", type=float, default=10.0, help="BD's loss_weight (alpha)")
    ap.add_argument("--batch", type=int, default=None, help="default: the run's batch size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)

    import torch
    from mmrazor.registry import MODELS as RAZOR_MODELS
    from mmseg.registry import MODELS as SEG_MODELS

    import bcd.mm  # noqa: F401
    from bcd import params as P
    from bcd.losses import BoundaryDistillLoss
    from bcd.mm import configs
    from bcd.schedule import AdaptiveTemperature
    from bcd.train import save_weights

    torch.set_num_threads(1)
    cfg = P.load_params(args.params)
    spec = P.resolve_run(cfg, args.run)
    bd_name = next(m for m, s in spec["methods"].items() if s["type"] == "BoundaryDistillLoss")
    base = dict(spec["methods"][bd_name], loss_weight=args.weight)
    data, nc = spec["data"], configs.num_classes(spec["data"])
    t_spec, s_spec = spec["teacher"]["model"], spec["student"]["model"]
    tmp = Path(tempfile.mkdtemp())
    ckpt = args.teacher_ckpt
    if ckpt is None:
        torch.manual_seed(args.seed)
        teacher = SEG_MODELS.build(configs.segmentor(t_spec, nc, configs.crop_size(data)))
        ckpt = tmp / "teacher.pth"
        save_weights(teacher, ckpt, {"kind": "teacher", "note": "random weights"})
    batch = _batch(cfg, spec, args.batch or spec["train"]["batch_size"], args.seed)

    rows = []
    for form, teacher in itertools.product(FORMS, TEACHERS):
        bd = dict(base, form=form, teacher=teacher)
        torch.manual_seed(args.seed)
        model_cfg = configs.distill_config(
            student_spec=s_spec, teacher_spec=t_spec, teacher_ckpt=ckpt, methods={bd_name: bd},
            decay_schedule=False, data=data, data_root=str(tmp), train=spec["train"],
            work_dir=str(tmp), seed=args.seed, log_file=str(tmp / "log.json")).model.to_dict()
        algo = RAZOR_MODELS.build(model_cfg)
        algo.train()
        algo.teacher.eval()
        loss_mod = algo.distiller.distill_losses[f"loss_{bd_name}"]
        assert isinstance(loss_mod, BoundaryDistillLoss)
        captured = []  # the teacher side of the softmax, as the temperature sees it (tau = 1)
        loss_mod.temperature.update = lambda t, dim, mask=None: captured.append((t, dim, mask))
        packed = algo.data_preprocessor(copy.deepcopy(batch), True)
        losses = algo(packed["inputs"], packed["data_samples"], mode="loss")
        params = [p for p in algo.student.backbone.parameters() if p.requires_grad]

        def norm(value):
            grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
            return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None)))

        ce = losses["student.decode.loss_ce"]
        g_ce, g_bd = norm(ce), norm(losses[f"distill.loss_{bd_name}"])
        (t_in, dim, mask), = captured
        stats = {stat: AdaptiveTemperature(statistic=stat).range_statistic(t_in, dim, mask)
                 for stat in ("prob_range", "relative_range")}
        # where the rule (x 1.05 while > 0.5) would stop on this batch: tau and its steps
        for stat in ("prob_range", "relative_range"):
            temp = AdaptiveTemperature(statistic=stat)
            steps = 0
            while steps < 2000 and temp.range_statistic(t_in, dim, mask) > temp.threshold:
                temp.tau_value.mul_(temp.factor)
                steps += 1
            stats[f"{stat}_tau_stop"], stats[f"{stat}_steps"] = temp.tau, steps
        size = tuple(packed["inputs"].shape[-2:])
        rows.append(dict(form=form, teacher=teacher, ce=float(ce), g_ce=g_ce, g_bd=g_bd,
                         share=g_bd / g_ce, kd=float(loss_mod.last_kd),
                         probe=float(loss_mod.last_probe), **stats))
        print(f"{form:9s} {teacher:11s} CE {float(ce):.3f} |g_CE| {g_ce:.4g} |g_BD| {g_bd:.4g} "
              f"share {100 * g_bd / g_ce:7.2f} %  BD-KD {rows[-1]['kd']:.4g}  "
              f"prob_range {stats['prob_range']:.3f} relative_range {stats['relative_range']:.2f} "
              f"(tau would stop at {stats['relative_range_tau_stop']:.3g} after "
              f"{stats['relative_range_steps']} steps)",
              flush=True)
    print(f"teacher: {'random weights' if args.teacher_ckpt is None else args.teacher_ckpt}; "
          f"alpha = {args.weight}; input {size}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
