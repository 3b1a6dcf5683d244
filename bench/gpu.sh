#!/usr/bin/env bash
# The bench harness on one GPU in under 10 minutes: writes bench/results-gpu.md (tables, MFU
# against the measured bf16 matmul rate) and bench/results-gpu.json next to it.
#
#   bash bench/gpu.sh                  # on the GPU machine, from the repo root, after
#                                      # pip install -e ".[dev]"; no internet needed
#   SEG_GPU_DRY=1 bash bench/gpu.sh    # dry run on a CPU: tiny sizes, one model, the same
#                                      # steps (compile included); writes to $SEG_GPU_OUT
#                                      # (default /tmp/seg-gpu-dry), never into bench/
#   PYTHON=/path/to/python bash bench/gpu.sh   # another interpreter than `python`
#
# It runs `python bench/run.py --gpu`: seg's trainer=gpu preset (bf16-mixed where supported,
# cudnn.benchmark) and channels_last, batches of 8-32 at crop 512, torchvision's reference at
# its crop 480 (batch 16), then torch.compile for inference (first model) and training (every
# model) last; a compile measurement that would end after --budget-s is skipped and listed in
# the report. Every net starts from random weights (no pretrained files offline).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's seg, wherever seg is installed
python="${PYTHON:-python}"

if [[ "${SEG_GPU_DRY:-0}" == "1" ]]; then
  out="${SEG_GPU_OUT:-${TMPDIR:-/tmp}/seg-gpu-dry}/results-gpu.json"
  limit=2400  # a 2-core CPU compiles for minutes
  args=(--smoke --models unet_resnet34 --workers 2 --budget-s 1800)
else
  if ! "$python" -c "import torch" 2>/dev/null; then
    echo "bench/gpu.sh: $python cannot import torch; run pip install -e \".[dev]\" first" >&2
    exit 1
  fi
  if ! "$python" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "bench/gpu.sh: no CUDA device visible to torch (torch.cuda.is_available() is False); SEG_GPU_DRY=1 runs it on the CPU" >&2
    exit 1
  fi
  out="bench/results-gpu.json"
  limit=590  # the whole harness, compiling included, in under 10 minutes
  workers=$("$python" -c "import os; print(max(2, min(8, len(os.sched_getaffinity(0)) - 4)))")
  args=(--gpu --workers "$workers" --budget-s 510)
fi
mkdir -p "$(dirname "$out")"
# SIGINT first: Python unwinds (loader workers, temporary folders) before the hard limit.
timeout --signal=INT --kill-after=10 "$limit" \
  "$python" bench/run.py "${args[@]}" --compile --train-compile --out "$out"
echo "bench/gpu.sh: wrote ${out%.json}.md and $out"
