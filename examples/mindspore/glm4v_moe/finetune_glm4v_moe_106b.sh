#!/usr/bin/env bash
# GLM-4.5V (106B-A12B) fine-tuning, mindspore backend. Extra arguments are config overrides: training.lr=2e-5 ...
# Convert first: one command stacks the hub's per-expert weights into the grouped-GEMM layout (no separate expert
# merge step; mm_to_hf splits them back byte for byte) and keeps e_score_correction_bias float32; the MTP layer 46
# is skipped with a note. The users' guide trains it with FSDP2 and no pipeline, so one piece (tp 1, pp 1):
#   mmx convert hf_to_mm --hf-dir ckpt/hf_path/GLM-4.5V --mm-dir ckpt/mm_path/GLM-4.5V
# (expert parallel layouts: add --ep-size 8, which must divide the 128 experts; mmx finetune reads any layout.)
# The guides' launch variables (defaults in ../../launch.sh, one device; the yaml says why no device holds this model
# on MindSpore today):
#   NPUS_PER_NODE=8 NNODES=4 NODE_RANK=0 MASTER_ADDR=node0 MASTER_PORT=29501 bash examples/mindspore/glm4v_moe/finetune_glm4v_moe_106b.sh
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../launch.sh"
CONFIG=${CONFIG:-$HERE/finetune_glm4v_moe_106b.yaml}
launch mindspore "$CONFIG" finetune_glm4v_moe_106b "$@"
