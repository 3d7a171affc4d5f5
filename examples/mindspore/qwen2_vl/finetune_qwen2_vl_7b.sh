#!/usr/bin/env bash
# Qwen2-VL-7B-Instruct fine-tuning, mindspore backend. Extra arguments are config overrides: training.lr=2e-5 ...
# The guides' launch variables (defaults in ../../launch.sh, one device; NPUS_PER_NODE=8 trains data parallel on 8):
#   NPUS_PER_NODE=1 NNODES=1 NODE_RANK=0 MASTER_ADDR=localhost MASTER_PORT=29501 bash examples/mindspore/qwen2_vl/finetune_qwen2_vl_7b.sh
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../launch.sh"
CONFIG=${CONFIG:-$HERE/finetune_qwen2_vl_7b.yaml}
launch mindspore "$CONFIG" finetune_qwen2_vl_7b "$@"
