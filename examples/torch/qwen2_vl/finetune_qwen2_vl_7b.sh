#!/usr/bin/env bash
# Qwen2-VL-7B-Instruct fine-tuning, torch backend. Extra arguments are config overrides: training.lr=2e-5 ...
# mmx finetune runs one process today: data / tensor / pipeline parallel training is not implemented yet and the
# trainer refuses a world size > 1, so keep NPUS_PER_NODE=1 and NNODES=1 (a 7B model then needs a device with room
# for fp32 weights + AdamW state, or freeze more of it). The variables follow the guides' launch scripts.
set -euo pipefail
source /usr/local/Ascend/cann/set_env.sh 2>/dev/null || true   # Ascend toolkit, when present
export TOKENIZERS_PARALLELISM=false
NPUS_PER_NODE=${NPUS_PER_NODE:-1}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-29501}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
WORLD_SIZE=$((NPUS_PER_NODE * NNODES))
CONFIG=${CONFIG:-$(dirname "$0")/finetune_qwen2_vl_7b.yaml}
mkdir -p logs
torchrun --nproc_per_node "$NPUS_PER_NODE" --nnodes "$NNODES" --node_rank "$NODE_RANK" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    "$(command -v mmx)" finetune --backend torch --config "$CONFIG" "$@" 2>&1 | tee logs/finetune_qwen2_vl_7b.log
