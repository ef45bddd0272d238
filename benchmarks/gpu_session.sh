#!/usr/bin/env bash
# What one lent GPU session runs (through the device tool; CI never has a GPU). Needs, untracked in .bench/:
# the data (cp -r ../shared/data .bench/data) and the MONAI wheel (pip download monai==1.6.1 --no-deps -d
# .bench/wheels). Each step is time-boxed so the whole fits one call; outputs go to $OUT.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src:/tmp/site"
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .bench/wheels/*.whl
mkdir -p ../shared && ln -sfn "$PWD/.bench/data" ../shared/data   # where benchmarks look for the data
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, os; print('torch', torch.__version__, 'cpus', len(os.sched_getaffinity(0)))" | tee -a "$OUT/gpu.txt"
timeout -k 5 "${THROUGHPUT_S:-170}" python3 benchmarks/train_throughput.py --device cuda --data .bench/data --no-save \
    --batch-size "${BATCH:-16}" --steps "${STEPS:-20}" --set data_workers=8 2>&1 | tee "$OUT/train_throughput.txt"
timeout -k 5 "${CHECKS_S:-110}" python3 benchmarks/cuda_checks.py --data .bench/data 2>&1 | tee "$OUT/cuda_checks.txt"
if [ "${REAL_S:-0}" -gt 0 ]; then
  timeout -k 5 "$REAL_S" python3 benchmarks/train_real.py --minutes "${REAL_MIN:-2}" --task chloroplast3d \
      --set batch_size=8 --set data_workers=8 2>&1 | tee "$OUT/train_real.txt"
fi
