#!/usr/bin/env bash
# Qwen3-VL-30B-A3B-Instruct fine-tuning, torch backend. Extra arguments are config overrides: training.lr=2e-5 ...
# Convert first, in the guide's pipeline layout (vision 27 blocks, LLM 48 layers of 128 experts top-8). The
# first stage holds the vision encoder and at least 3 LLM layers: LLM layers 0-2 receive the deepstack features.
#   mmx convert hf_to_mm --hf-dir ckpt/hf_path/Qwen3-VL-30B-A3B-Instruct --mm-dir ckpt/mm_path/Qwen3-VL-30B-A3B-Instruct --vit-pp-layers 27,0,0,0 --llm-pp-layers 6,14,14,14 --ep-size 1
# The layout is the guide's (tp 1, ep 1; MindSpeed-MM's MindSpore script trains the same PP 4 with TP 2, EP 2:
# add --tp-size 2 --ep-size 2). mmx finetune reads any layout; ep_size must divide the 128 experts.
# The guides' launch variables (defaults in ../../launch.sh, one device; NPUS_PER_NODE=8 NNODES=2 trains data
# parallel on 16, fully sharded: training.data_parallel in the yaml, which says what loading needs today):
#   NPUS_PER_NODE=1 NNODES=1 NODE_RANK=0 MASTER_ADDR=localhost MASTER_PORT=29501 bash examples/torch/qwen3_vl_moe/finetune_qwen3_vl_30b_a3b.sh
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../launch.sh"
CONFIG=${CONFIG:-$HERE/finetune_qwen3_vl_30b_a3b.yaml}
launch torch "$CONFIG" finetune_qwen3_vl_30b_a3b "$@"
