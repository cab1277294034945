"""``python -m bcd check-params``: validate the params and print what they plan."""
from __future__ import annotations

from pathlib import Path

from bcd.params.load import files_of
from bcd.params.paths import data_dir, table_paths
from bcd.params.resolve import (data_section, datasets_used, figures_spec, table_dataset,
                                table_rows, teachers_used)
from bcd.params.stages import stages
from bcd.params.validate import load_params


def main_check(args) -> None:
    """``python -m bcd check-params --params F...``: validate and print a summary."""
    cfg = load_params(args.params)
    st = stages(cfg)
    print(f"params OK: {' + '.join(files_of(cfg))} (profile {cfg['profile']})")
    several = cfg.get("datasets") is not None
    print(f"  seeds {cfg['seeds']}")
    for ds in datasets_used(cfg):
        key = "data" if ds is None else f"datasets.{ds}"
        print(f"  {key}: {data_section(cfg, ds)['dataset']} -> {data_dir(cfg, ds)}")

    def on(ds) -> str:
        return f" on {'data' if ds is None else ds}" if several else ""

    for t in teachers_used(cfg):
        spec = cfg["teachers"][t]
        print(f"  teacher {t}: {spec['model']}, {cfg['train']['teacher']['iters']} iters"
              f"{on(spec.get('dataset'))}")
    for run, spec in cfg["runs"].items():
        kd = (f" <- {spec['teacher']} [{', '.join(spec['distill'])}"
              f"{' + r(t)' if spec.get('weight_decay_schedule') else ''}]"
              if spec.get("distill") else "")
        print(f"  run {run}: {spec['student']}{kd}{on(spec.get('dataset'))}")
    for name, table in cfg["tables"].items():
        print(f"  table {name}: {len(table_rows(table))} rows{on(table_dataset(cfg, name))} -> "
              f"{table_paths(cfg, name)['csv']}")
    fig = figures_spec(cfg)
    if fig is not None:
        print(f"  figures: {fig['student']} vs {fig['distilled']} (seed {fig['seed']}), "
              f"table {fig['table']} -> {Path(cfg['paths']['results']) / 'figures'}")
    elif "figures" in cfg:
        print(f"  figures: none (table {cfg['figures']['table']} has no row without "
              "distillation or none with BD from its teacher; set figures.student/distilled)")
    kinds: dict[str, int] = {}
    for s in st:
        kind = s.name.split("-")[0] if not s.name.startswith("evaluate-teacher") else "evaluate"
        kinds[kind] = kinds.get(kind, 0) + 1
    print(f"  {len(st)} stages: " + ", ".join(f"{n} {k}" for k, n in kinds.items()))
