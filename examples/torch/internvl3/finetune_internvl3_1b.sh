#!/usr/bin/env bash
# InternVL3-1B (InternViT-300M (24 layers, 16 heads) + Qwen2.5-0.5B (24 layers)) fine-tuning, torch backend. Extra
# arguments are config overrides: training.lr=2e-5 ... Convert first (the -hf repo, or an original OpenGVLab repo's
# safetensors with the -hf repo's config.json and processor files beside them: both weight layouts are read and
# written back as read); one piece, or a pipeline layout with all 24 vision layers on the first stage (mmx finetune
# reads any layout).
#   mmx convert hf_to_mm --hf-dir ckpt/hf_path/InternVL3-1B-hf --mm-dir ckpt/mm_path/InternVL3-1B
#   mmx convert hf_to_mm --hf-dir ckpt/hf_path/InternVL3-1B-hf --mm-dir ckpt/mm_path/InternVL3-1B --vit-pp-layers 24,0 --llm-pp-layers 12,12
# The guides' launch variables (defaults in ../../launch.sh, one device; NPUS_PER_NODE=8 trains data parallel on 8:
# training.data_parallel in the yaml says what each device holds):
#   NPUS_PER_NODE=8 NNODES=1 NODE_RANK=0 MASTER_ADDR=localhost MASTER_PORT=29501 bash examples/torch/internvl3/finetune_internvl3_1b.sh
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../launch.sh"
CONFIG=${CONFIG:-$HERE/finetune_internvl3_1b.yaml}
launch torch "$CONFIG" finetune_internvl3_1b "$@"
