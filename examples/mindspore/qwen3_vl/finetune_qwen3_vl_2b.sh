#!/usr/bin/env bash
# Qwen3-VL-2B-Instruct fine-tuning, mindspore backend. Extra arguments are config overrides: training.lr=2e-5 ...
# Convert first, in the guide's pipeline layout (vision 24 blocks, LLM 28 layers; mmx finetune reads any layout). The
# first stage holds the vision encoder and at least 3 LLM layers: LLM layers 0-2 receive the deepstack features.
#   mmx convert hf_to_mm --hf-dir ckpt/hf_path/Qwen3-VL-2B-Instruct --mm-dir ckpt/mm_path/Qwen3-VL-2B-Instruct --vit-pp-layers 24,0,0,0 --llm-pp-layers 4,8,8,8
# The guides' launch variables (defaults in ../../launch.sh, one device; NPUS_PER_NODE=8 trains data parallel on 8):
#   NPUS_PER_NODE=1 NNODES=1 NODE_RANK=0 MASTER_ADDR=localhost MASTER_PORT=29501 bash examples/mindspore/qwen3_vl/finetune_qwen3_vl_2b.sh
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../launch.sh"
CONFIG=${CONFIG:-$HERE/finetune_qwen3_vl_2b.yaml}
launch mindspore "$CONFIG" finetune_qwen3_vl_2b "$@"
