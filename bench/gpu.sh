#!/usr/bin/env bash
# On a machine with a CUDA GPU: the CUDA cases of the tests, then the GPU bench; log and figures into DIR (< 5 min).
# Where the project's packages are missing (the lent GPU machine has its own torch and no package registry), carry
# them as Python 3.12 wheels in .whl/ (README, Benchmarks): they and the project go into a target directory first.
set -uo pipefail
out=$(realpath -m "${1:?usage: bench/gpu.sh DIR}")
mkdir -p "$out"
cd "$(dirname "$0")/.."
exec > >(tee -a "$out/gpu.log") 2>&1
if compgen -G '.whl/*.whl' >/dev/null; then
  site=${TMPDIR:-/tmp}/scv-site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --no-build-isolation --upgrade \
    --target "$site" .whl/*.whl . || exit
  export PYTHONPATH="$site" PATH="$site/bin:$PATH"
fi
python3 - <<'EOF' || exit
import sys, torch
if not torch.cuda.is_available():
    sys.exit("bench/gpu.sh: torch sees no CUDA GPU here")
print("#", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability(), "torch", torch.__version__,
      "CUDA", torch.version.cuda, "Python", sys.version.split()[0])
EOF
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,utilization.gpu --format=csv || true
# The tests' CUDA cases: precision (fp32 and bf16 on the device, each bit-identical twice), the loop's host
# synchronisations not growing with the steps, resume bit-identical on CUDA, ops without a deterministic kernel named.
timeout 150 python3 -m pytest --noconftest -p no:cacheprovider -q -rs \
  tests/test_precision.py tests/test_training.py tests/test_reproducibility.py
echo "# tests exit status $?"
# The bench: the service on the GPU at its default precision (auto: bf16 from capability 8.0).
SCV_DEVICE=cuda timeout 330 python3 -m bench --json gpu | tee "$out/bench.out"
status=${PIPESTATUS[0]}
tail -n 1 "$out/bench.out" > "$out/gpu.json"
echo "# bench exit status $status"
exit "$status"
