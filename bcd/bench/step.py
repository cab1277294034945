"""One training step with BCD (boundary + context distillation) against one with plain logit KD.

Both are mmrazor ``SingleTeacherDistill`` algorithms built by the project's glue
(:func:`bcd.mm.configs.distill_config`) from a run of the params (default ``r18-bcd`` of
``params/default.yaml``: PSPNet-R101 -> PSPNet-R18 and its ``bd`` + ``cd`` terms), on the same
teacher (random weights, saved and loaded as a checkpoint), the same initial student and the
same batch. The KD algorithm differs only in its distiller: the params' method ``kd`` (bcd's
``PixelKDLoss``, Hinton KD per pixel on the logits), or with ``--kd mmrazor`` (or when the params
have no ``kd``) mmrazor's ``KLDivergence`` between the student's and the teacher's
``decode_head.conv_seg`` outputs; nothing is recorded from the backbones. ``bd`` and ``cd`` alone
can be timed too (``--methods kd bd cd bcd``).

A step is ``algo.train_step(batch, optim_wrapper)`` (data preprocessing, teacher forward, student
forward, distillation losses, backward, SGD update), followed by clearing the connectors' memos as
the training hook does. The methods alternate within every round so that they share the
machine's load; the reported time is the median of ``--repeats`` rounds after ``--warmup``.
The temperatures follow the params (adaptive unless ``--temperature fixed``): a context-loss
pass repeated because tau was raised in that step (see ``ContextDistillLoss``) is counted.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

from bcd.bench import write_result

_KD_METHODS = ("kd", "bd", "cd", "bcd")


def _kd_distiller(tau: float, loss_weight: float) -> dict:
    from bcd.mm import configs

    return dict(
        _scope_="mmrazor", type="ConfigurableDistiller",
        student_recorders={"logits": dict(type="ModuleOutputs", source="decode_head.conv_seg")},
        teacher_recorders={"logits": dict(type="ModuleOutputs", source="decode_head.conv_seg")},
        distill_losses={"loss_kd": dict(type="KLDivergence", tau=tau, loss_weight=loss_weight)},
        loss_forward_mappings={"loss_kd": {
            "preds_S": copy.deepcopy(configs.TAPS["student.logits"]),
            "preds_T": copy.deepcopy(configs.TAPS["teacher.logits"])}},
    )


def synthetic_batch(batch: int, size: int | tuple[int, int], num_classes: int,
                    seed: int) -> dict:
    """Random images and blocky label maps (square regions of 32 pixels) as mmseg packs them:
    ``{"inputs": [uint8 (3, H, W)], "data_samples": [SegDataSample]}``; ``size`` is ``H = W`` or
    ``(H, W)``."""
    import torch
    import torch.nn.functional as F
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    h, w = (size, size) if isinstance(size, int) else tuple(size)
    gen = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    coarse = (max(1, h // 32), max(1, w // 32))
    for _ in range(batch):
        inputs.append(torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8))
        grid = torch.randint(0, num_classes, (1, 1, *coarse), generator=gen).float()
        labels = F.interpolate(grid, size=(h, w), mode="nearest").long()[0]
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=labels)
        sample.set_metainfo(dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w)))
        samples.append(sample)
    return {"inputs": inputs, "data_samples": samples}


def random_teacher(teacher_spec, num_classes: int, crop_size, path: Path, seed: int,
                   note: str) -> Path:
    """An untrained teacher (PyTorch's default initialisation, seeded), saved as a weights file
    at ``path`` that the distillation config loads like a trained teacher's."""
    import torch
    from mmseg.registry import MODELS as SEG_MODELS

    from bcd.mm import configs
    from bcd.weights import save_weights

    torch.manual_seed(seed)
    teacher = SEG_MODELS.build(configs.segmentor(teacher_spec, num_classes, crop_size))
    save_weights(teacher, path, {"kind": "teacher", "note": note})
    return path


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _build(args, tmp: Path) -> tuple[dict, dict]:
    """The algorithms ``{method: algo}`` and a description of the setting."""
    import torch
    from mmengine.registry import OPTIM_WRAPPERS
    from mmrazor.registry import MODELS as RAZOR_MODELS

    import bcd.mm  # noqa: F401  (compat patches, registration)
    from bcd import params as P
    from bcd.mm import configs
    from bcd.mm.amp import optim_wrapper

    device = _device(args.device)
    if "fp16" in args.amp and not device.startswith("cuda"):
        raise SystemExit("bcd.bench step: --amp fp16 needs a GPU (--device cuda)")

    cfg = P.load_params(args.params)
    spec = P.resolve_run(cfg, args.run)
    if not spec["methods"]:
        raise SystemExit(f"bcd.bench step: run {args.run!r} has no distillation terms")
    data = dict(spec["data"], height=args.size, width=args.size)
    nc = configs.num_classes(data)
    teacher_spec, student_spec = spec["teacher"]["model"], spec["student"]["model"]
    if args.base_channels:  # e.g. 64 = the paper's width 1.0
        teacher_spec = dict(teacher_spec, base_channels=args.base_channels)
        student_spec = dict(student_spec, base_channels=args.base_channels)
    ckpt = random_teacher(teacher_spec, nc, configs.crop_size(data), tmp / "teacher.pth",
                          args.seed, "bcd.bench step, random weights")

    bcd_methods = dict(spec["methods"])
    if args.temperature == "fixed":
        for settings in bcd_methods.values():
            settings.pop("temperature", None)
    wanted = {"bd": {k: v for k, v in bcd_methods.items() if v["type"] == "BoundaryDistillLoss"},
              "cd": {k: v for k, v in bcd_methods.items() if v["type"] == "ContextDistillLoss"},
              "bcd": bcd_methods}
    algos, student_state = {}, None
    kd_from_params = args.kd == "params" and "kd" in cfg.get("methods", {})
    kd_label = (f"params method kd ({cfg['methods']['kd']['type']})" if kd_from_params
                else f"mmrazor KLDivergence (tau {args.kd_tau})")
    for method in args.methods:
        if method == "kd":
            methods = {"kd": dict(cfg["methods"]["kd"])} if kd_from_params else bcd_methods
        else:
            methods = wanted[method]
        if not methods:
            raise SystemExit(f"bcd.bench step: run {args.run!r} has no term for {method!r}")
        model_cfg = configs.distill_config(
            student_spec=student_spec, teacher_spec=teacher_spec, teacher_ckpt=ckpt,
            methods=methods, decay_schedule=False, data=data, data_root=str(tmp),
            train=spec["train"], work_dir=str(tmp), seed=args.seed,
            log_file=str(tmp / "log.json")).model.to_dict()
        if method == "kd" and not kd_from_params:  # same model, the distiller swapped
            model_cfg["distiller"] = _kd_distiller(args.kd_tau, args.kd_weight)
        for amp in args.amp:  # an algorithm per precision, all from the same initial student
            algo = RAZOR_MODELS.build(model_cfg)
            if student_state is None:
                student_state = copy.deepcopy(algo.student.state_dict())
            else:
                algo.student.load_state_dict(student_state)
            algo.to(device).train()  # PairedTeacherDistill keeps the teacher in eval mode
            train = dict(spec["train"], amp=amp)
            wrapper = optim_wrapper(train)
            wrapper.pop("optimizer")
            params = [p for p in algo.parameters() if p.requires_grad]
            optim = OPTIM_WRAPPERS.build(dict(wrapper, optimizer=torch.optim.SGD(
                params, lr=train["lr"], momentum=train["momentum"],
                weight_decay=train["weight_decay"])))
            algos[method if len(args.amp) == 1 else f"{method}@{amp}"] = (algo, optim)
    setting = {"run": args.run, "teacher": spec["teacher"]["model_name"],
               "student": spec["student"]["model_name"], "terms": sorted(bcd_methods),
               "num_classes": nc, "base_channels": [teacher_spec.get("base_channels"),
                                                    student_spec.get("base_channels")],
               "kd": kd_label, "device": device, "amp": list(args.amp)}
    return algos, setting


def _cd_losses(algo) -> list:
    from bcd.losses import ContextDistillLoss

    return [m for m in algo.distiller.distill_losses.values() if isinstance(m, ContextDistillLoss)]


def _taus(algo) -> dict:
    out = {}
    for name, loss in algo.distiller.distill_losses.items():
        temp = getattr(loss, "temperature", None)
        if temp is not None and hasattr(temp, "tau"):
            out[name] = round(float(temp.tau), 4)
    return out


def _train_step(algo, optim, batch) -> dict:
    log_vars = algo.train_step(batch, optim)
    for conn in algo.distiller.connectors.values():
        if hasattr(conn, "clear_memo"):
            conn.clear_memo()
    return log_vars


def _breakdown(algo, batch, repeats: int) -> list[tuple[str, float]]:
    """Median ms of each distillation component alone, on this step's tensors (fwd + bwd)."""
    import torch

    from bcd.losses import BoundaryDistillLoss, ContextDistillLoss

    data = algo.data_preprocessor(batch, True)
    inputs = data["inputs"]
    labels = torch.stack([d.gt_sem_seg.data[0] for d in data["data_samples"]])
    with torch.no_grad():
        t_feats = algo.teacher.backbone(inputs)
        s_feats = [f.detach().requires_grad_(True) for f in algo.student.backbone(inputs)]
    conns = algo.distiller.connectors

    def fuse(name, feats):
        conn = conns[name]
        if hasattr(conn, "clear_memo"):
            conn.clear_memo()
        return conn(feats)

    with torch.no_grad():  # the teacher-side inputs a BD/CD reading may read
        t_logits = algo.teacher.decode_head(t_feats)
        head = algo.teacher.decode_head
        t_head = head._forward_feature(t_feats) if hasattr(head, "_forward_feature") else None
    jobs = []
    if "s_fuse" in conns:
        s_fused = fuse("s_fuse", s_feats).detach().requires_grad_(True)
        t_fused = None
        jobs.append(("student fusion (fwd + bwd)",
                     lambda: fuse("s_fuse", s_feats).sum().backward()))
        if "t_fuse" in conns:  # absent when only CD reads the teacher's head or logits
            with torch.no_grad():
                t_fused = fuse("t_fuse", t_feats)
            jobs.append(("teacher fusion (fwd)", lambda: fuse("t_fuse", t_feats)))
        for name, loss in algo.distiller.distill_losses.items():
            if isinstance(loss, BoundaryDistillLoss):
                jobs.append((f"{name} (fwd + bwd)",
                             lambda loss=loss: loss(s_fused, t_fused, gt_seg=labels,
                                                    teacher_logits=t_logits).backward()))
            elif isinstance(loss, ContextDistillLoss):
                t_side = {"fused": t_fused, "head": t_head, "logits": t_logits}[
                    loss.teacher_features]
                if t_side is None:
                    continue  # a head without _forward_feature: no separate timing
                jobs.append((f"{name} (fwd + bwd)",
                             lambda loss=loss, t_side=t_side: loss(s_fused, t_side).backward()))
    out = []
    for name, job in jobs:
        job()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            job()
            times.append(time.perf_counter() - t0)
        out.append((name, 1e3 * statistics.median(times)))
    return out


def _profile(algo, optim, batch, top: int) -> str:
    """Top ops of one step and the wall time of each distillation module's forward."""
    from torch.profiler import ProfilerActivity, profile

    spent: dict[str, float] = {}
    handles = []
    modules = dict(algo.distiller.distill_losses.items())
    modules.update({f"connector {k}": v for k, v in algo.distiller.connectors.items()})
    for name, module in modules.items():
        def pre(_mod, _inp, name=name):
            spent[name] = spent.get(name, 0.0) - time.perf_counter()

        def post(_mod, _inp, _out, name=name):
            spent[name] += time.perf_counter()
        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _train_step(algo, optim, batch)
    total = time.perf_counter() - t0
    for h in handles:
        h.remove()
    lines = [f"one profiled step: {total:.3f} s (profiler overhead included); forward time of:"]
    lines += [f"  {name}: {seconds:.3f} s" for name, seconds in spent.items()]
    lines.append("each distillation component alone, median of 5 (ms):")
    lines += [f"  {name}: {ms:.1f}" for name, ms in _breakdown(algo, batch, 5)]
    lines.append(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))
    return "\n".join(lines)


def run(args) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bcd-bench-step-") as tmp:
        algos, setting = _build(args, Path(tmp))
        batch = synthetic_batch(args.batch, args.size, setting["num_classes"], args.seed)
        passes = {m: 0 for m in algos}
        for method, (algo, _) in algos.items():
            for loss in _cd_losses(algo):  # count the context passes repeated after a tau raise
                def count(_mod, _inp, _out, method=method, loss=loss):
                    if getattr(loss, "_bench_tau", None) is not None and loss.training:
                        passes[method] += int(loss.temperature.tau != loss._bench_tau)
                loss.register_forward_pre_hook(
                    lambda mod, _inp: setattr(mod, "_bench_tau", mod.temperature.tau))
                loss.register_forward_hook(count)
        print(f"training step, {setting['teacher']} -> {setting['student']} (run {args.run}, "
              f"terms {'+'.join(setting['terms'])} vs kd = {setting['kd']}, base channels "
              f"{'/'.join(map(str, setting['base_channels']))}), batch {args.batch} x "
              f"{args.size}x{args.size}, "
              f"{torch.get_num_threads()} threads, temperature {args.temperature}; median of "
              f"{args.repeats} after {args.warmup} warm-up, methods alternating", flush=True)
        times = {m: [] for m in algos}
        cpu_times = {m: [] for m in algos}
        peak_mb = {m: None for m in algos}
        cuda = setting["device"].startswith("cuda")
        for round_ in range(args.warmup + args.repeats):
            if round_ == args.warmup:
                passes = dict.fromkeys(passes, 0)
            for method, (algo, optim) in algos.items():
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                t0, c0 = time.perf_counter(), time.process_time()
                _train_step(algo, optim, batch)
                if cuda:
                    torch.cuda.synchronize()
                    peak_mb[method] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
                if round_ >= args.warmup:
                    times[method].append(time.perf_counter() - t0)
                    cpu_times[method].append(time.process_time() - c0)
        medians = {m: statistics.median(t) for m, t in times.items()}
        cpu_medians = {m: statistics.median(t) for m, t in cpu_times.items()}
        first_kd = next((m for m in medians if m.split("@")[0] == "kd"), None)
        ref, cpu_ref = medians.get(first_kd), cpu_medians.get(first_kd)
        header = (f"{'method':>8} {'median s':>9} {'min s':>7} {'max s':>7} {'/ kd':>6} "
                  f"{'cpu s':>7} {'cpu / kd':>8}  notes")
        print(header)
        print("-" * len(header))
        rows = []
        for method, ts in times.items():
            ratio = medians[method] / ref if ref else None
            cpu_ratio = cpu_medians[method] / cpu_ref if cpu_ref else None
            algo = algos[method][0]
            notes = []
            if _taus(algo):
                notes.append("tau " + ", ".join(f"{k}={v}" for k, v in _taus(algo).items()))
            if _cd_losses(algo):
                notes.append(f"repeated cd passes {passes[method]}/{args.repeats}")
            print(f"{method:>8} {medians[method]:>9.3f} {min(ts):>7.3f} {max(ts):>7.3f} "
                  f"{'-' if ratio is None else format(ratio, '.3f'):>6} "
                  f"{cpu_medians[method]:>7.3f} "
                  f"{'-' if cpu_ratio is None else format(cpu_ratio, '.3f'):>8}  "
                  f"{'; '.join(notes)}")
            rows.append({"method": method, "median_s": medians[method], "times_s": ts,
                         "ratio_to_kd": ratio, "cpu_median_s": cpu_medians[method],
                         "cpu_times_s": cpu_times[method], "cpu_ratio_to_kd": cpu_ratio,
                         "taus": _taus(algo), "peak_cuda_mb": peak_mb[method],
                         "repeated_cd_passes": passes[method] if _cd_losses(algo) else None})
        print("median s: wall clock; cpu s: CPU time of this process (all its threads), less "
              "sensitive to other load on the machine.")
        profile_text = None
        if args.profile:
            target = next((m for m in ("bcd", "cd", "bd") if m in algos), None)
            if target:
                profile_text = _profile(*algos[target], batch, args.profile)
                print(f"\nprofile of one '{target}' step:\n{profile_text}")
    result = {"meta": dict(setting, batch=args.batch, size=args.size, kd_reference=first_kd,
                           threads=torch.get_num_threads(), torch=torch.__version__,
                           temperature=args.temperature, repeats=args.repeats,
                           warmup=args.warmup, params=args.params),
              "rows": rows, "profile": profile_text}
    return write_result(result, args.json)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", nargs="+", default=["params/default.yaml"],
                        help="params files, merged in order (default params/default.yaml)")
    parser.add_argument("--run", default="r18-bcd",
                        help="the run whose teacher, student and terms are used (default r18-bcd)")
    parser.add_argument("--methods", nargs="+", choices=_KD_METHODS, default=["kd", "bcd"],
                        help="what to time: kd (logit KD), bd, cd, bcd (bd + cd). Default kd bcd")
    parser.add_argument("--size", type=int, default=256,
                        help="input height = width in pixels (default 256; the paper's 512)")
    parser.add_argument("--batch", type=int, default=2, help="batch size, >= 2 (default 2)")
    parser.add_argument("--base-channels", type=int, default=0,
                        help="override both models' base_channels (the params' width; 64 = the "
                             "paper's width 1.0). Default: as in the params")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    parser.add_argument("--temperature", choices=("params", "fixed"), default="params",
                        help="'params': the temperatures of the params (adaptive); 'fixed': "
                             "tau = 1 for bd and cd. Default params")
    parser.add_argument("--kd", choices=("params", "mmrazor"), default="params",
                        help="logit KD: 'params' = the params' method 'kd' (bcd's PixelKDLoss) "
                             "through the same glue, falling back to 'mmrazor' (mmrazor's "
                             "KLDivergence on the decode head's logits) if there is none. "
                             "Default params")
    parser.add_argument("--kd-tau", type=float, default=1.0,
                        help="temperature of the mmrazor KD (default 1)")
    parser.add_argument("--kd-weight", type=float, default=1.0,
                        help="loss weight of the mmrazor KD (default 1)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument("--amp", nargs="+", choices=("none", "bf16", "fp16"), default=["none"],
                        help="mixed precision of the step (bcd.mm.amp); several are timed side "
                             "by side as METHOD@AMP (fp16 needs a GPU). Default none")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and batch")
    parser.add_argument("--profile", type=int, nargs="?", const=15, default=0, metavar="TOP",
                        help="also profile one BCD step: the TOP ops (default 15) and the time "
                             "of each distillation component alone")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")


def main(args) -> int:
    if args.size < 32 or args.batch < 2 or args.repeats < 1 or args.warmup < 0:
        raise SystemExit("bcd.bench step: needs --size >= 32, --batch >= 2 (batch norm in "
                         "training mode), --repeats >= 1, --warmup >= 0")
    run(args)
    return 0
