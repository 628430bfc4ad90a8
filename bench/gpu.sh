#!/usr/bin/env bash
# On a machine with a CUDA GPU and the project installed: the GPU tests, then the training bench on the GPU (< 5 min).
set -euo pipefail
cd "$(dirname "$0")/.."
python -c 'import sys, torch
if not torch.cuda.is_available():
    sys.exit("bench/gpu.sh: torch sees no CUDA GPU here")
print("#", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability(), "torch", torch.__version__)'
# Tests that run their CUDA cases only where a GPU is: precision (fp32 and bf16 on the device, each bit-identical
# twice), and the loop's host synchronisations not growing with the number of steps.
timeout 120 python -m pytest --noconftest -q -rs tests/test_precision.py tests/test_training.py
# The training bench with the service on the GPU at its default precision (auto: bf16 from capability 8.0).
SCV_DEVICE=cuda SCV_PRECISION=auto timeout 240 python -m bench training --json
