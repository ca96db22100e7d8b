#!/usr/bin/env bash
# The CUDA paths for real, on a machine with one GPU (README, "GPU"). Writes its logs and the GPU run's
# checkpoint to $OUT (default gpu_check/), so that the checkpoint can be loaded on a machine without a GPU.
#
#     bash benchmarks/gpu_check.sh [WHEELS_DIR]   # WHEELS_DIR: wheels to install offline first (gymnasium, ...)
#
# 1. the fast-path equality tests and tests/test_device.py with every tensor on the GPU (MAMLDQN_TEST_DEVICE=cuda);
# 2. `mamldqn fit` of configs/cartpole.yaml for 1,000 meta-steps on the GPU and the same on the CPU, side by side
#    (meta-steps/s from each run's metrics.csv), then `mamldqn test` of the GPU run on the GPU;
# 3. the whole test suite on that machine's CPUs (its own torch and Python).
set -u
OUT=${OUT:-gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if [ -n "${1:-}" ]; then $PY -m pip install -q --no-index --no-deps "$1"/*.whl 2>&1 | tail -n 2; fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')" | tee "$OUT/env.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$OUT/env.txt" 2>&1

echo "== 1. fast paths on cuda" | tee "$OUT/summary.txt"
MAMLDQN_TEST_DEVICE=cuda timeout 300 $PY -m pytest -q -x -p no:cacheprovider tests/test_fast_paths.py tests/test_device.py > "$OUT/fast_paths_cuda.log" 2>&1
echo "rc $? $(tail -n 1 "$OUT/fast_paths_cuda.log")" | tee -a "$OUT/summary.txt"

echo "== 2. fit 1000 meta-steps: gpu, then cpu" | tee -a "$OUT/summary.txt"
common=(--config configs/cartpole.yaml --trainer.max_steps 1000 --trainer.enable_progress_bar false)
for acc in gpu cpu; do
  rm -rf "/tmp/gpu_check_$acc"
  start=$(date +%s)
  timeout 400 $PY -m mamldqn_pl fit "${common[@]}" --trainer.accelerator "$acc" --run_dir "/tmp/gpu_check_$acc" \
    > "$OUT/fit_$acc.log" 2>&1
  echo "fit $acc rc $? wall $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt"
  $PY - "$acc" <<'EOF' | tee -a "$OUT/summary.txt"
import csv, statistics, sys
rows = list(csv.DictReader(open(f"/tmp/gpu_check_{sys.argv[1]}/metrics.csv")))
rate = [float(r["perf/meta_steps_per_s"]) for r in rows if r.get("perf/meta_steps_per_s")]
val = [(r["step"], r["meta_val/return_k3"]) for r in rows if r.get("meta_val/return_k3")]
print(f"  {sys.argv[1]}: median {statistics.median(rate):.1f} meta-steps/s; validation (step, return at K=3): {val}")
EOF
done
cp /tmp/gpu_check_gpu/checkpoints/last.ckpt "$OUT/gpu_last.ckpt" 2>/dev/null
timeout 300 $PY -m mamldqn_pl test --config configs/cartpole.yaml --trainer.accelerator gpu \
  --run_dir /tmp/gpu_check_gpu --ckpt_path /tmp/gpu_check_gpu/checkpoints/last.ckpt \
  --model.test_budgets "[200]" --model.test_ks "[0, 3, 5]" --trainer.enable_progress_bar false > "$OUT/test_gpu.log" 2>&1
echo "test gpu rc $?" | tee -a "$OUT/summary.txt"
grep -A8 "| init" "$OUT/test_gpu.log" | head -n 12 >> "$OUT/summary.txt"

[ "${RUN_SUITE:-1}" = 1 ] || exit 0
echo "== 3. the whole suite on this machine's CPUs" | tee -a "$OUT/summary.txt"
timeout "${SUITE_TIMEOUT:-240}" $PY -m pytest -q -p no:cacheprovider -n 12 tests > "$OUT/suite.log" 2>&1
echo "rc $? $(tail -n 1 "$OUT/suite.log")" | tee -a "$OUT/summary.txt"
