#!/usr/bin/env bash
# Qwen3-VL-235B-A22B-Instruct fine-tuning, torch backend. Extra arguments are config overrides: training.lr=2e-5 ...
# Convert first, in a pipeline + expert-parallel layout (vision 27 blocks, LLM 94 layers of 128 experts top-8).
# The first stage holds the vision encoder and at least 3 LLM layers: LLM layers 0-2 receive the deepstack features.
#   mmx convert hf_to_mm --hf-dir ckpt/hf_path/Qwen3-VL-235B-A22B-Instruct --mm-dir ckpt/mm_path/Qwen3-VL-235B-A22B-Instruct --vit-pp-layers 27,0,0,0,0,0,0,0 --llm-pp-layers 10,12,12,12,12,12,12,12 --ep-size 8
# The guide has no 235B conversion (MindSpeed-MM trains it FSDP2 with PP 1); this PP 8 x EP 8 layout is ours
# (16 experts per EP rank). mmx finetune reads any layout; ep_size must divide the 128 experts.
# The guides' launch variables (defaults in ../../launch.sh, one device; NPUS_PER_NODE=8 NNODES=16 trains data
# parallel on 128, fully sharded: training.data_parallel in the yaml, which says why it cannot load today):
#   NPUS_PER_NODE=1 NNODES=1 NODE_RANK=0 MASTER_ADDR=localhost MASTER_PORT=29501 bash examples/torch/qwen3_vl_moe/finetune_qwen3_vl_235b_a22b.sh
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../launch.sh"
CONFIG=${CONFIG:-$HERE/finetune_qwen3_vl_235b_a22b.yaml}
launch torch "$CONFIG" finetune_qwen3_vl_235b_a22b "$@"
