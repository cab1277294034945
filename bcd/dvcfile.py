"""dvc.yaml, generated from the params (``python -m bcd dvc-yaml``): one DVC stage per stage
of :func:`bcd.params.stages` (the Snakefile's rules come from the same list) and the plots of
:func:`bcd.figures.dvc_plots`."""
from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any, Sequence

import yaml

from bcd import figures
from bcd import params as P
from bcd.atomic import write_text_atomic


def _param_files(cfg, keys: Sequence[str]) -> list[dict]:
    """``params:`` entries of a stage. The first (base) file lists the stage's key paths that it
    defines, so a change reruns exactly the stages that use it. Overlay files are tracked whole
    (``- params/micro.yaml:``): a key added to an overlay later must still be seen, and DVC
    refuses keys a file does not define; overlays are small profiles, so this costs little."""
    files = P.files_of(cfg)
    base = P.read_params_file(files[0])
    entries = []
    found = [k for k in keys if P.defines(base, tuple(k.split(".")))]
    if found:
        entries.append({files[0]: found})
    entries += [{f: None} for f in files[1:]]
    return entries


def dvc_yaml(cfg, wdir: str | None = None) -> dict:
    """The dvc.yaml content for :func:`stages`. ``wdir``: the repository root relative to the
    file's folder, for a dvc.yaml written outside the root (a profile's own pipeline, e.g.
    ``pipelines/camvid/dvc.yaml`` with ``wdir: ../..``): every path stays root-relative."""
    out = {}
    for st in P.stages(cfg):
        entry: dict[str, Any] = {"cmd": st.cmd, **({"wdir": wdir} if wdir else {}),
                                 "deps": list(st.deps)}
        if st.params:
            entry["params"] = _param_files(cfg, st.params)
        if st.outs:
            entry["outs"] = list(st.outs) if st.cache else [{o: {"cache": False}} for o in st.outs]
        if st.metrics:
            entry["metrics"] = [{m: {"cache": False}} for m in st.metrics]
        out[st.name] = entry
    doc: dict[str, Any] = {"stages": out}
    if P.figures_spec(cfg) is not None:
        doc["plots"] = _rebased(figures.dvc_plots(cfg), wdir)
    return doc


def _rebased(plots: list, wdir: str | None) -> list:
    """Top-level plots name files relative to the dvc.yaml's folder (they have no ``wdir``)."""
    if not wdir:
        return plots

    def path(p: str) -> str:
        return f"{wdir.rstrip('/')}/{p}"

    out = []
    for entry in plots:
        if isinstance(entry, str):
            out.append(path(entry))
            continue
        (pid, spec), = entry.items()
        spec = dict(spec)
        if isinstance(spec.get("y"), dict):
            spec["y"] = {path(f): cols for f, cols in spec["y"].items()}
        out.append({pid: spec})
    return out


class _DvcDumper(yaml.SafeDumper):
    """Writes ``None`` as nothing, as in DVC's docs: ``- params/micro.yaml:`` (the whole file)."""


_DvcDumper.add_representer(type(None),
                           lambda dumper, _: dumper.represent_scalar("tag:yaml.org,2002:null", ""))


def dvc_yaml_text(cfg, out: str | os.PathLike = "dvc.yaml") -> str:
    """The file's text; ``out`` (relative to the repository root, the current folder) decides
    the stages' ``wdir`` (none for the root's own dvc.yaml)."""
    args = " ".join(f"--params {shlex.quote(f)}" for f in P.files_of(cfg))
    folder = Path(out).parent
    wdir = None if folder == Path(".") else os.path.relpath(".", folder)
    target = "" if wdir is None else f" --out {shlex.quote(str(out))}"
    header = ("# GENERATED from the run matrix by\n"
              f"#   python -m bcd dvc-yaml {args}{target}\n"
              "# Do not edit: change params/ and regenerate")
    if wdir is None:
        header += " (a test checks that it is current).\n"
    else:
        header += f".\n# Run from the repository root: dvc repro {out}\n"
    body = yaml.dump(dvc_yaml(cfg, wdir), Dumper=_DvcDumper, sort_keys=False,
                     default_flow_style=False, width=100)
    return header + body


def main_dvc_yaml(args) -> None:
    """``python -m bcd dvc-yaml --params F... [--out dvc.yaml]``: write the generated dvc.yaml
    (``--out pipelines/<profile>/dvc.yaml``: a profile's own pipeline beside the committed one,
    its stages run from the repository root)."""
    cfg = P.load_params(args.params)
    out = Path(getattr(args, "out", None) or "dvc.yaml")
    inside = out
    if out.is_absolute():
        try:
            inside = out.resolve().relative_to(Path.cwd().resolve())
        except ValueError:  # outside this repository: written as a root dvc.yaml (no wdir)
            inside = Path("dvc.yaml")
    write_text_atomic(out, dvc_yaml_text(cfg, inside))
    print(f"wrote {out}: {len(P.stages(cfg))} stages")
