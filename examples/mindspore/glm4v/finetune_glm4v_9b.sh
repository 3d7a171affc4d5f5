#!/usr/bin/env bash
# GLM-4.1V-9B-Thinking fine-tuning, mindspore backend. Extra arguments are config overrides: training.lr=2e-5 ...
# Convert first, in the guide's pipeline layout (vision 24 blocks on the first stage, LLM 40 layers; mmx finetune
# reads any layout; GLM's vision tower must sit on stage 0 whole):
#   mmx convert hf_to_mm --hf-dir ckpt/hf_path/GLM-4.1V-9B-Thinking --mm-dir ckpt/mm_path/GLM-4.1V-9B-Thinking --vit-pp-layers 24,0,0,0 --llm-pp-layers 5,12,12,11
# The guides' launch variables (defaults in ../../launch.sh, one device; NPUS_PER_NODE=8 trains data parallel on 8,
# every device holding the whole model and its AdamW state: the yaml says how much memory that is):
#   NPUS_PER_NODE=8 NNODES=1 NODE_RANK=0 MASTER_ADDR=localhost MASTER_PORT=29501 bash examples/mindspore/glm4v/finetune_glm4v_9b.sh
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../launch.sh"
CONFIG=${CONFIG:-$HERE/finetune_glm4v_9b.yaml}
launch mindspore "$CONFIG" finetune_glm4v_9b "$@"
