"""The code each stage depends on, computed from the import graph (no hand-written lists).

A stage runs ``python -m bcd <command>``: :mod:`bcd.__main__` and :mod:`bcd.cli` (which import
only :mod:`bcd.params` at the top and the command's module inside the command's function),
then the command's module. Its code dependencies are those files plus every module of ``bcd``
that the command's module imports, transitively, *counting imports inside functions* (an
over-approximation: a module imported on some path is a dependency even where this run does
not reach it; a stage is never stale for want of a file), and the package ``__init__`` files
Python runs on the way. Data files read by the code are added by hand where a module reads
one (:data:`DATA_FILES`), and so are modules imported by name at run time
(:data:`DYNAMIC_IMPORTS`: the loss modules the mmrazor registration finds through
:mod:`bcd.methods`). Plain Python (``ast``): nothing is imported to compute this.

The Snakefile and dvc.yaml take their code dependencies from :func:`stage_code`; a test runs
each stage and checks that every ``bcd`` module it actually loaded is listed.
"""
from __future__ import annotations

import ast
import os
from functools import lru_cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.parent

#: the module each kind of stage runs (``python -m bcd <command>``)
STAGE_MODULES = {
    "data": ("bcd.data.registry",),
    "teacher": ("bcd.train",),
    "train": ("bcd.train",),
    "evaluate": ("bcd.evaluate",),
    "table": ("bcd.tables",),
    "figures": ("bcd.figures",),
}
#: every stage runs these (bcd.specrecord: the record written after the stage succeeded)
ENTRY = ("bcd.__main__", "bcd.cli", "bcd.params", "bcd.specrecord")
#: non-Python files a module reads whose content can change a result
DATA_FILES = {"bcd.reference": ("bcd/reference/bcd_reported_results.csv",)}
#: modules that import others by name at run time: each counts as importing every module of
#: these packages (bcd.mm.registry imports the module of every loss that bcd.methods finds;
#: bcd.data.registry imports every module of bcd.data and collects their dataset ENTRIES)
DYNAMIC_IMPORTS = {"bcd.mm.registry": ("bcd.losses",), "bcd.data.registry": ("bcd.data",)}


def module_path(name: str) -> Path | None:
    """The file of module ``name`` of bcd (a package's ``__init__.py``), None if none."""
    parts = name.split(".")
    if parts[0] != "bcd":
        return None
    base = ROOT.joinpath(*parts)
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def package_modules(package: str) -> list[str]:
    """Every module of a bcd package, the package's own ``__init__`` included."""
    folder = ROOT.joinpath(*package.split("."))
    return sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                  for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


@lru_cache(maxsize=None)
def imports_of(name: str) -> tuple[str, ...]:
    """The bcd modules that module ``name`` imports anywhere in its file (top level or inside
    functions), with the packages Python runs on the way."""
    path = module_path(name)
    if path is None:
        return ()
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            # `from pkg import name`: name may be a submodule
            found.update(f"{mod}.{a.name}" for a in node.names)
    for pkg in DYNAMIC_IMPORTS.get(name, ()):
        found.update(package_modules(pkg))
    out = set()
    for mod in found:
        if module_path(mod) is not None:
            out.add(mod)
            out.update(p for p in _parents(mod) if module_path(p) is not None)
    out.discard(name)
    return tuple(sorted(out))


def closure(modules, leaves=()) -> list[str]:
    """``modules`` and every bcd module they import, transitively (sorted names); the imports
    of ``leaves`` are not followed."""
    seen: set[str] = set()
    todo = [m for m in modules]
    for m in list(todo):
        todo += [p for p in _parents(m) if module_path(p) is not None]
    while todo:
        mod = todo.pop()
        if mod in seen or module_path(mod) is None:
            continue
        seen.add(mod)
        if mod not in leaves:
            todo.extend(imports_of(mod))
    return sorted(seen)


def stage_modules(kind: str) -> list[str]:
    """The bcd modules a stage of ``kind`` can run: the entry modules (:mod:`bcd.cli` counted
    as a file, not through its other commands' imports) and the closure of the command's."""
    if kind not in STAGE_MODULES:
        raise ValueError(f"unknown kind of stage {kind!r} (known: {', '.join(STAGE_MODULES)})")
    entry = closure(ENTRY, leaves=("bcd.cli",))
    return sorted(set(entry) | set(closure(STAGE_MODULES[kind])))


def _tracked(folder: Path) -> set[str]:
    """The files of ``folder`` a tool would hash (caches excluded, as in .dvcignore)."""
    return {f.relative_to(ROOT).as_posix() for f in folder.rglob("*")
            if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc"}


def compact(files) -> tuple[str, ...]:
    """``files`` with each folder whose every file is listed written as the folder (shorter
    dvc.yaml; :func:`bcd.params.code_files` expands folders back for Snakemake)."""
    files = set(files)
    out = set(files)
    folders = sorted({Path(f).parent for f in files}, key=lambda d: len(d.parts))
    for folder in folders:
        if folder == Path(".") or folder.as_posix() == PACKAGE.name:
            continue
        if any(parent.as_posix() in out for parent in folder.parents):
            continue  # inside a folder already written as one
        mine = _tracked(ROOT / folder)
        if mine and mine <= files:
            out = (out - mine) | {folder.as_posix()}
    return tuple(sorted(out))


def stage_files(kind: str) -> tuple[str, ...]:
    """Files (relative to the repository root, sorted) a stage of ``kind`` depends on."""
    files = set()
    for mod in stage_modules(kind):
        files.add(module_path(mod).relative_to(ROOT).as_posix())
        files.update(DATA_FILES.get(mod, ()))
    return tuple(sorted(files))


@lru_cache(maxsize=None)
def stage_code(kind: str) -> tuple[str, ...]:
    """:func:`stage_files`, complete folders written as folders (dvc.yaml ``deps``)."""
    return compact(stage_files(kind))


def import_cycles() -> list[list[str]]:
    """Cycles of the import graph among all bcd modules (each as a list of module names)."""
    mods = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                  for p in PACKAGE.rglob("*.py"))
    graph = {m: [d for d in imports_of(m) if not m.startswith(d + ".")] for m in mods}
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for m in mods:
        if m not in index:
            visit(m)
    return out


def record_imports(folder) -> None:
    """Write the command line and the bcd modules loaded so far to ``folder/<pid>.json`` (the
    check that a stage's declared code covers what it runs, tests/test_end_to_end.py)."""
    import json
    import os
    import sys

    loaded = sorted(m for m in sys.modules if m == "bcd" or m.startswith("bcd."))
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / f"{os.getpid()}.json").write_text(
        json.dumps({"argv": sys.argv[1:], "modules": loaded}))


#: where the Snakefile keeps one digest file per kind of stage (:func:`write_digest`)
DIGEST_DIR = Path(".snakemake") / "bcd-code"


def write_digest(kind: str, files, folder: Path = DIGEST_DIR) -> Path:
    """``folder/<kind>.json``: the sha256 of each of ``files`` (a stage kind's code), written
    when missing or when that content differs, with the time of the newest of ``files``.

    The Snakefile gives each job this one file as input instead of the ~60 code files, with the
    same reruns: a job is older than its code exactly when it is older than the newest code
    file (outputs built by DVC or plain commands before the digest existed stay current); a
    file only touched, or edited back, reruns nothing (as in DVC). Snakemake's scheduler looks
    at every input of every ready job whenever a job ends: ~60x fewer inputs cut its share of
    the main job from ~15 % of a core.
    """
    import hashlib
    import json

    digest = {}
    for name in sorted(files):
        h = hashlib.sha256()
        with open(name, "rb") as fh:
            h.update(fh.read())
        digest[str(name)] = h.hexdigest()
    text = json.dumps({"kind": kind, "files": digest}, indent=1, sort_keys=True) + "\n"
    path = Path(folder) / f"{kind}.json"
    try:
        if path.read_text() == text:
            return path
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    newest = max((os.stat(name).st_mtime for name in digest), default=0.0)
    os.utime(tmp, (newest, newest))
    os.replace(tmp, path)
    return path
