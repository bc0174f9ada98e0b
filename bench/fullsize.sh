#!/usr/bin/env bash
# Full-size evidence in one call on a lent GPU (bench/fullsize.py has the jobs; BENCHMARKS.md "Full size" the results).
#
#   bash bench/fullsize_pack.sh                       # here, once: .fullsize/ = wheels, weights, data (< 64 MiB)
#   device run, carry [".fullsize"]:  bash bench/fullsize.sh    (results in $OUT; about 6-8 minutes on an H100/H200)
#   python bench/fullsize.py summarize --out <fetched $OUT> --dest bench/results/fullsize.json
#
# Rehearsal on CPU with a few rows (what bench/results/fullsize_rehearsal/ holds):
#   FULLSIZE_ROWS=64 FULLSIZE_EPOCHS=1 OUT=/tmp/fullsize-rehearsal bash bench/fullsize.sh
#
# The four training jobs run side by side on the one GPU: a 22M-parameter model leaves it mostly idle (about
# 25 ms a step, nearly all fixed overhead), so four processes finish in about the time of the longest. The
# encode benchmark runs alone afterwards, so that nothing else shares the GPU while it is timed.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/fullsize-out}
WORK=${FULLSIZE_WORK:-/tmp/fullsize-work}
ROWS=${FULLSIZE_ROWS:-0}
EPOCHS=${FULLSIZE_EPOCHS:-3}
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$WORK"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# The project is not installed on the device machine: its root on the path (bench/ finds common.py by itself).
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

# The device image lacks some packages and has no network: install the carried wheels, unpack weights and data.
ENCODER=sentence-transformers/all-MiniLM-L6-v2
if [ -d .fullsize ]; then
  if ! $PY -c "import datasets, evaluate, seqeval, transformers as t, packaging.version as v
assert v.parse(t.__version__) >= v.parse('5.24')" 2>/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .fullsize/wheels/*
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  ENCODER=$WORK/all-MiniLM-L6-v2
  $PY - "$ENCODER" <<'PY'   # the weights travel as float16 (to fit the carry limit): back to float32
import shutil, sys, torch
from pathlib import Path
from safetensors.torch import load_file, save_file
target = Path(sys.argv[1]); shutil.copytree(".fullsize/minilm", target, dirs_exist_ok=True)
save_file({k: v.float() for k, v in load_file(target / "model.safetensors").items()}, target / "model.safetensors",
          metadata={"format": "pt"})
PY
  if [ ! -e ../shared/data ]; then mkdir -p ../shared/data && tar -xJf .fullsize/data.tar.xz -C ../shared/data; fi
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null | tee "$OUT/gpu.txt" || true
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee "$OUT/versions.txt"

BF16=""
if $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then BF16="--bf16"; fi
COMMON=(--out "$OUT" --workdir "$WORK" --encoder "$ENCODER" --rows "$ROWS" --epochs "$EPOCHS" $BF16)
start=$(date +%s)
$PY bench/fullsize.py multitask --settings guide "${COMMON[@]}" > "$OUT/multitask-guide.log" 2>&1 &
pids=($!)
$PY bench/fullsize.py multitask --settings plain "${COMMON[@]}" > "$OUT/multitask-plain.log" 2>&1 &
pids+=($!)
$PY bench/fullsize.py single --task ner "${COMMON[@]}" > "$OUT/single-ner.log" 2>&1 &
pids+=($!)
$PY bench/fullsize.py single --task sentiment "${COMMON[@]}" > "$OUT/single-sentiment.log" 2>&1 &
pids+=($!)
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
echo "training jobs: $(( $(date +%s) - start )) s (status $status)"
$PY bench/fullsize.py frozen-head "${COMMON[@]}" > "$OUT/frozen-head.log" 2>&1 || status=1
echo "frozen-head done: $(( $(date +%s) - start )) s"
$PY bench/fullsize.py encode "${COMMON[@]}" > "$OUT/encode.log" 2>&1 || status=1
echo "encode done: $(( $(date +%s) - start )) s"
$PY bench/fullsize.py summarize "${COMMON[@]}" --dest "$OUT/fullsize.json" | tail -60
for log in "$OUT"/*.log; do grep -l -E "Traceback|Error" "$log" >/dev/null && { echo "== $log"; tail -5 "$log"; }; done
exit $status
