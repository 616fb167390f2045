#!/usr/bin/env bash
# Train some of a sweep's cells on a lent GPU machine and bring them back, in one device-tool call.
#
# Here, once per checkout (pure-Python wheels the GPU image lacks, and the CIFAR-10 copy, into .gpu/, git-ignored):
#     bash benchmarks/gpu_cells.sh --prepare
# On the GPU machine (the device tool's `run`, with carry [".gpu"]; SECONDS leaves about a minute of the call's
# limit for packing):
#     bash benchmarks/gpu_cells.sh SECONDS benchmarks/specs/cifar10_pai.yaml 'vgg16-synflow-*' 'vgg16-snip-*'
# Then here, on the folder the files came back to:
#     python benchmarks/gpu_cells.py unpack FOLDER && edgeprune sweep benchmarks/specs/cifar10_pai.yaml
# The sweep runs the matching cells (and those they start from) with `--device cuda` until SECONDS pass; every
# cell finished by then is packed into $OUT (benchmarks/gpu_cells.py: at most 63 MiB come back, in the patterns'
# order; what does not fit is named in the output). GPU_CELLS_DEVICE=cpu tries the whole path on a CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --prepare ]; then
    mkdir -p .gpu
    version=$(python3 -c "import importlib.metadata as m; print(m.version('torch-pruning'))" 2>/dev/null \
              || .venv/bin/python -c "import importlib.metadata as m; print(m.version('torch-pruning'))")
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        -d .gpu "torch-pruning==$version" || exit 1
    data=${EDGEPRUNE_DATA:-$HOME/.cache/edgeprune}/cifar10/cifar10-jpg.tar.gz
    [ -f "$data" ] || data=../shared/datasets/cifar10-jpg.tar.gz
    [ -f "$data" ] || { echo "error: no cifar10-jpg.tar.gz (run make data first)"; exit 2; }
    cp "$data" .gpu/cifar10-jpg.tar.gz
    ls -la .gpu
    exit 0
fi
if [ $# -lt 3 ]; then
    echo "usage: bash benchmarks/gpu_cells.sh SECONDS SPEC PATTERN... (or --prepare)"; exit 2
fi
seconds=$1 spec=$2
shift 2
out=${OUT:-/tmp/gpu_cells_out}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/*.whl || exit 1
export PYTHONPATH="$PWD/src:/tmp/site" PYTHONUNBUFFERED=1 EDGEPRUNE_DATA=/tmp/edgeprune-data
mkdir -p "$EDGEPRUNE_DATA/cifar10" && cp .gpu/cifar10-jpg.tar.gz "$EDGEPRUNE_DATA/cifar10/"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
only=()
for p in "$@"; do only+=(--only "$p"); done
start=$(date +%s)
timeout --signal=TERM -k 30 "$seconds" python3 -m edgeprune sweep "$spec" "${only[@]}" \
    --device "${GPU_CELLS_DEVICE:-cuda}" --out "/tmp/runs/$(basename "$spec" .yaml)"
rc=$?
echo "sweep: exit $rc after $(( $(date +%s) - start )) s (124: stopped at the time limit)"
python3 benchmarks/gpu_cells.py pack /tmp/runs "$@" --to "$out" || exit 1
# the sweep's own failures (a bad spec, failed cells) are the call's; a cell cut off at the limit is not
[ "$rc" = 124 ] || [ "$rc" = 137 ] && exit 0
exit "$rc"
