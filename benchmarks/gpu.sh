#!/usr/bin/env bash
# Every GPU figure (CNN, features, the whole comparison) from one command, as JSON on stdout.
# Run from the repository root on a machine with an NVIDIA GPU and CVPIPE_CIFAR10_SOURCE set:
#   bash benchmarks/gpu.sh [--cpu-results reports/cifar10-full/results.json] [--steps cnn,features]
# See benchmarks/gpu.py for what each figure counts.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec "$PYTHON" benchmarks/gpu.py "$@"
