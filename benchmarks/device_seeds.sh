#!/usr/bin/env bash
# Training seeds on a lent GPU machine's CPU cores (16 there against 2 here), with the CUDA checks of the code that
# changed since benchmarks/gpu_check.sh last ran, in one command. Every fit runs on the CPU (one torch thread), as
# here; only the checks use the GPU.
#
#     bash benchmarks/device_seeds.sh WHEELS_DIR DEADLINE_S [seeds.py flags...]
#
# WHEELS_DIR: wheels to install offline (gymnasium, jsonargparse, ...: that machine has torch and Lightning but no
# registry); DEADLINE_S: seeds.py is stopped after this many seconds, and whatever finished comes back anyway
# (a run writes fit_done, then seeds_eval.json and val_profile.json when it is done; a run cut short keeps its
# metrics.csv). The runs go to /tmp/device_runs; their small files (no checkpoints) come back as $OUT/runs.tgz, to
# be unpacked into the --runs folder here, where seeds.py reuses them and writes the tables.
set -u
OUT=${OUT:-device_out}
mkdir -p "$OUT"
wheels=$1 deadline=$2
shift 2
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$wheels"/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -c "import torch, sys, os; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda',
torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '', 'cpus', os.cpu_count())" \
  | tee "$OUT/summary.txt"

timeout "$deadline" python3 benchmarks/seeds.py --runs /tmp/device_runs --out "$OUT" \
  --extra-args "--trainer.accelerator cpu" "$@" > "$OUT/seeds.log" 2>&1 &
seeds=$!

{
  echo "== fast paths and the device tests on cuda"
  MAMLDQN_TEST_DEVICE=cuda timeout 240 python3 -m pytest -q -x -p no:cacheprovider tests/test_fast_paths.py \
    tests/test_device.py 2>&1 | tail -n 3
  echo "== data.collection current, then ahead, with the module on the GPU (200 meta-steps each)"
  echo "   then process (must refuse, one line)"
  for mode in current ahead process; do
    timeout 200 python3 -m mamldqn_pl fit --config configs/cartpole.yaml --trainer.accelerator gpu \
      --trainer.max_steps 200 --meta_val.every_n_steps 100 --trainer.enable_progress_bar false \
      --data.collection "$mode" --run_dir "/tmp/gpu_$mode" > "/tmp/gpu_$mode.log" 2>&1
    echo "$mode: rc $?; last lines:"
    tail -n 2 "/tmp/gpu_$mode.log"
  done
  python3 - <<'EOF'
import csv
for mode in ("current", "ahead"):
    rows = list(csv.DictReader(open(f"/tmp/gpu_{mode}/metrics.csv")))
    print(f"{mode} on gpu, validation (step, return at K = 5):",
          [(r["step"], r["meta_val/return_k5"]) for r in rows if r.get("meta_val/return_k5")])
EOF
  echo "== mamldqn test of the current-mode GPU run, on the GPU"
  timeout 200 python3 -m mamldqn_pl test --config configs/cartpole.yaml --trainer.accelerator gpu \
    --run_dir /tmp/gpu_current --ckpt_path /tmp/gpu_current/checkpoints/last.ckpt --model.test_budgets "[200]" \
    --model.test_ks "[0, 5]" --trainer.enable_progress_bar false > /tmp/gpu_test.log 2>&1
  echo "test rc $?"
  grep -A5 "| init" /tmp/gpu_test.log | head -n 8
} >> "$OUT/summary.txt" 2>&1

wait $seeds
echo "seeds.py rc $?" >> "$OUT/summary.txt"
tar czf "$OUT/runs.tgz" -C /tmp/device_runs --exclude checkpoints --exclude 'events.out.*' .
ls /tmp/device_runs >> "$OUT/summary.txt"
cat "$OUT/summary.txt"
