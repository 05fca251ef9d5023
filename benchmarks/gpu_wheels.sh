#!/usr/bin/env bash
# Wheels for benchmarks/gpu_check.sh on a GPU machine that has PyTorch (and numpy, pytest, pillow, ...) but
# no network: SB3, gymnasium, ale-py and this project, for that machine's Python (default 3.12, x86-64 Linux).
#
#   bash benchmarks/gpu_wheels.sh [--python-version 3.12] [--dest .whl]
#
# Then copy the repository with .whl/ to the GPU machine and run `bash benchmarks/gpu_check.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."

python_version=3.12
dest=.whl
while [ $# -gt 0 ]; do
    case "$1" in
        --python-version) python_version="$2"; shift 2 ;;
        --dest) dest="$2"; shift 2 ;;
        *) echo "gpu_wheels.sh: unknown argument '$1' (valid: --python-version X.Y, --dest DIR)" >&2; exit 2 ;;
    esac
done

mkdir -p "$dest"
rm -f "$dest"/*.whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
# Pure-Python and binary wheels, without their dependencies (the GPU machine has the rest).
python -m pip download -q --no-deps --only-binary=:all: --python-version "$python_version" --implementation cp \
    "${platforms[@]}" -d "$dest" \
    "stable-baselines3==$(python -c 'import stable_baselines3; print(stable_baselines3.__version__)')" \
    "gymnasium==$(python -c 'import gymnasium; print(gymnasium.__version__)')" \
    "ale-py==$(python -c 'import ale_py; print(ale_py.__version__)')" \
    farama-notifications cloudpickle
python -m pip wheel -q --no-deps -w "$dest" .
ls -l "$dest"
du -sh "$dest"
