#!/usr/bin/env bash
# Qwen2.5-VL-7B-Instruct fine-tuning, torch backend. Extra arguments are config overrides: training.lr=2e-5 ...
# The guides' launch variables (defaults in ../../launch.sh, one device; NPUS_PER_NODE=8 trains data parallel on 8,
# fully sharded: training.data_parallel in the yaml, so 8 x 64 GB devices hold the 7B model and AdamW state):
#   NPUS_PER_NODE=1 NNODES=1 NODE_RANK=0 MASTER_ADDR=localhost MASTER_PORT=29501 bash examples/torch/qwen2_5_vl/finetune_qwen2_5_vl_7b.sh
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../launch.sh"
CONFIG=${CONFIG:-$HERE/finetune_qwen2_5_vl_7b.yaml}
launch torch "$CONFIG" finetune_qwen2_5_vl_7b "$@"
