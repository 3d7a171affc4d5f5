#!/usr/bin/env bash
# Build a tiny Qwen2-VL checkpoint and the digits set, convert, fine-tune with tiny.yaml on mindspore, export to HF.
# Run from the directory you want the files in; extra arguments are config overrides (training.train_iters=10).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
python - <<'PY'
import os
from mmx.convert.drivers import hf_to_mm
from mmx.data.digits import make_digits_vqa
from mmx.tiny import make_tiny_checkpoint
if not os.path.exists("tiny_qwen2_vl/mm/latest_checkpointed_iteration.txt"):
    make_tiny_checkpoint("tiny_qwen2_vl/hf", family="qwen2_vl")
    make_digits_vqa("tiny_qwen2_vl/digits", size=56)
    hf_to_mm("tiny_qwen2_vl/hf", "tiny_qwen2_vl/mm")
PY
mmx finetune --backend mindspore --config "$HERE/tiny.yaml" "$@"
mmx convert mm_to_hf --mm-dir tiny_qwen2_vl/save --save-hf-dir tiny_qwen2_vl/save_hf
