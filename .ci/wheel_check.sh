#!/usr/bin/env bash
# The wheel as a user gets it: build it, install it NON-editably into a fresh venv, and from a folder
# outside the repository write phantom data, prepare it, run a real `evaluate` and the `leaderboard`
# (which reads the published rows shipped as package data).
#
# Cheap on purpose (CI: 2 cores, PyPI only): the fresh venv gets its dependencies from the project
# venv through a .pth line naming that venv's site-packages. A directory added by a .pth line is not
# itself scanned for .pth files, so the project venv's editable-install finder never loads; the
# script checks that `cxrbench` then imports from the fresh venv.
#
# Usage: .ci/wheel_check.sh [PROJECT_VENV]   (default: .venv)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=$(cd "${1:-$ROOT/.venv}" && pwd)
PY="$VENV/bin/python"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cxrbench-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
unset PYTHONPATH PYTHONHOME  # nothing may point back into the source tree
start=$(date +%s)
step() { echo "[wheel-check $(($(date +%s) - start))s] $*"; }

step "build the wheel from a copy of the project files (the repository stays untouched)"
mkdir "$WORK/src"
cp -R "$ROOT/pyproject.toml" "$ROOT/README.md" "$ROOT/cxrbench" "$WORK/src/"
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/dist" "$WORK/src"
WHEEL=$(ls "$WORK"/dist/cxrbench-*.whl)
step "built $(basename "$WHEEL") ($(du -k "$WHEEL" | cut -f1) KiB)"

step "fresh venv; install the wheel (no dependencies) before the project venv is visible to it"
"$PY" -m venv --without-pip "$WORK/venv"
FRESH="$WORK/venv/bin/python"
"$PY" -m pip --python "$FRESH" install -q --no-deps --no-index "$WHEEL"
FRESH_SITE=$("$FRESH" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
"$PY" -c "import sysconfig; p = sysconfig.get_paths(); print(p['purelib']); print(p['platlib'])" \
  | sort -u >"$FRESH_SITE/cxrbench_ci_dependencies.pth"

step "the installed copy is the one imported"
cd "$WORK"  # outside the repository
"$FRESH" - "$WORK/venv" <<'EOF'
import sys
from pathlib import Path

import cxrbench
from cxrbench.datasets.reference_splits import reference_split_ids
from cxrbench.leaderboard.published import load_published

venv = Path(sys.argv[1]).resolve()
where = Path(cxrbench.__file__).resolve()
assert venv in where.parents, f"cxrbench imported from {where}, not from the fresh venv {venv}"
finders = [type(f).__module__ for f in sys.meta_path if "editable" in type(f).__module__]
assert not finders, f"the project venv's editable finder was loaded: {finders}"
counts = {k: len(v) for k, v in reference_split_ids("covid_rural").items()}
assert counts == {"train": 133, "val": 44, "test": 44}, counts
assert len(load_published()) > 0
print(f"cxrbench {where.parent}")
EOF
CLI="$WORK/venv/bin/cxrbench"

step "phantom covid_rural -> prepare -> evaluate random (demo, 1 seed) -> leaderboard"
"$CLI" phantom raw --dataset covid_rural --n-images 40 --seed 1 >/dev/null
"$CLI" prepare covid_rural raw/covid_rural prepared/covid_rural --size 128 >/dev/null
"$CLI" evaluate random --data prepared --tasks covid_linear --profile demo --seeds 1 \
  --runs-dir runs --arch resnet18 --device cpu >/dev/null
ls runs/random/covid_linear/run-*.json >/dev/null
"$CLI" leaderboard --runs-dir runs --out board --n-boot 50 --n-boot-detection 0 >board.log
for f in leaderboard.md leaderboard.csv; do
  [ -s "board/$f" ] || { cat board.log; echo "board/$f was not written"; exit 1; }
done
grep -q "(published)" board/leaderboard.md || { echo "published rows missing from board/leaderboard.md"; exit 1; }
step "ok: the wheel installs, evaluates and builds the leaderboard outside the repository"
