#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install the pinned stack.
# Idempotent: a second run checks a stamp file and returns in a second.
# Facts behind the pins: torch 2.13.0 CPU wheel, mmcv 2.1.0 built with its ops (needs
# setuptools>=77,<81 and --no-build-isolation; ~15 min on 2 cores the first time, then pip's
# wheel cache makes it seconds), mmengine 0.10.7, mmsegmentation 1.2.2, mmrazor 1.0.0 (--no-deps).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${BCD_VENV:-$here/.venv}"
py="${PYTHON:-python3}"
stamp="$venv/.bcd-stack-ok"
reqs="$here/tools/requirements.txt"
want="$(cat "$reqs" "$0" | sha256sum | cut -c1-16)"

# yapf (imported by mmengine) writes its grammar pickles under ~/.cache/YAPF at its first import;
# two processes importing it at once in a fresh home (the test workers, two workflow jobs) can
# read a half-written pickle (EOFError, seen in CI). One import here, before anything runs in
# parallel, writes them.
warm_caches() { "$venv/bin/python" -c "import yapf" >&2; }
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  warm_caches
  exit 0
fi
echo "[setup] creating environment in $venv" >&2
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip() { "$venv/bin/python" -m pip --disable-pip-version-check "$@"; }
t_start=$SECONDS
elapsed() { printf '%dm%02ds' $(( (SECONDS - t_start) / 60 )) $(( (SECONDS - t_start) % 60 )); }
# Run "$@" and print a line every minute while it runs (a long, silent build looks like a hang).
with_progress() {
  local label=$1; shift
  local t0=$SECONDS next=60 pid
  "$@" & pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 2
    if (( SECONDS - t0 >= next )) && kill -0 "$pid" 2>/dev/null; then
      echo "[setup]   ... $label: $(( (SECONDS - t0) / 60 )) min so far (setup $(elapsed))" >&2
      next=$(( next + 60 ))
    fi
  done
  wait "$pid"
}
pip install -q --upgrade pip
# torch first and exactly: a looser spec pulls a multi-GB CUDA build.
echo "[setup] torch 2.13.0 ($(elapsed))" >&2
with_progress "torch" pip install -q "torch==2.13.0" "numpy>=2,<2.5" ninja wheel "setuptools>=77,<81"
if ! "$venv/bin/python" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '2.1.0'" 2>/dev/null; then
  # mmcv's ops for CUDA where a CUDA toolkit and a CUDA build of torch are both there (a GPU
  # machine whose pip installs torch's CUDA wheel); else for the CPU.
  cuda=0
  if command -v nvcc >/dev/null 2>&1; then
    if "$venv/bin/python" -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)"; then
      cuda=1
    else
      echo "[setup] nvcc found, but torch is a CPU build: mmcv's ops are built for the CPU" >&2
    fi
  fi
  echo "[setup] building mmcv 2.1.0 with $([ $cuda = 1 ] && echo CUDA || echo CPU) ops" \
       "(about 15 min the first time on 2 cores; pip's cache makes later installs seconds)" >&2
  MMCV_WITH_OPS=1 FORCE_CUDA=$cuda MAX_JOBS="${MAX_JOBS:-2}" \
    with_progress "building mmcv" pip install -q --no-build-isolation "mmcv==2.1.0"
fi
echo "[setup] the OpenMMLab stack, snakemake, dvc, pandas ($(elapsed))" >&2
with_progress "requirements" pip install -q -r "$reqs"
pip install -q --no-deps "mmrazor==1.0.0"
pip install -q -e "$here" --no-deps --no-build-isolation
"$venv/bin/python" -m pip check >&2 || echo "[setup] warning: pip check reported the above" >&2
warm_caches
echo "$want" > "$stamp"
echo "[setup] environment ready: $venv ($(elapsed))" >&2
