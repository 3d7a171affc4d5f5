#!/usr/bin/env bash
# Qwen3-VL-32B-Instruct fine-tuning, torch backend. Extra arguments are config overrides: training.lr=2e-5 ...
# Convert first, in the guide's pipeline layout (vision 27 blocks, LLM 64 layers; mmx finetune reads any layout). The
# first stage holds the vision encoder and at least 3 LLM layers: LLM layers 0-2 receive the deepstack features.
#   mmx convert hf_to_mm --hf-dir ckpt/hf_path/Qwen3-VL-32B-Instruct --mm-dir ckpt/mm_path/Qwen3-VL-32B-Instruct --vit-pp-layers 27,0,0,0 --llm-pp-layers 10,18,18,18
# The guides' launch variables (defaults in ../../launch.sh, one device; NPUS_PER_NODE=8 NNODES=2 trains data
# parallel on 16, fully sharded: training.data_parallel in the yaml, so 16 x 64 GB devices hold the 32B model and
# AdamW state):
#   NPUS_PER_NODE=1 NNODES=1 NODE_RANK=0 MASTER_ADDR=localhost MASTER_PORT=29501 bash examples/torch/qwen3_vl/finetune_qwen3_vl_32b.sh
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../launch.sh"
CONFIG=${CONFIG:-$HERE/finetune_qwen3_vl_32b.yaml}
launch torch "$CONFIG" finetune_qwen3_vl_32b "$@"
