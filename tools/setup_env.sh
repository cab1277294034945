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

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[setup] creating environment in $venv" >&2
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip() { "$venv/bin/python" -m pip --disable-pip-version-check "$@"; }
pip install -q --upgrade pip
# torch first and exactly: a looser spec pulls a multi-GB CUDA build.
pip install -q "torch==2.13.0" "numpy>=2,<2.5" ninja wheel "setuptools>=77,<81"
if ! "$venv/bin/python" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '2.1.0'" 2>/dev/null; then
  echo "[setup] building mmcv 2.1.0 with CPU ops (about 15 min the first time on 2 cores)" >&2
  MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="${MAX_JOBS:-2}" pip install -q --no-build-isolation "mmcv==2.1.0"
fi
pip install -q -r "$reqs"
pip install -q --no-deps "mmrazor==1.0.0"
pip install -q -e "$here" --no-deps --no-build-isolation
"$venv/bin/python" -m pip check >&2 || echo "[setup] warning: pip check reported the above" >&2
echo "$want" > "$stamp"
echo "[setup] environment ready: $venv" >&2
