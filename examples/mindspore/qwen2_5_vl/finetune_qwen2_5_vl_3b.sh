#!/usr/bin/env bash
# Qwen2.5-VL-3B-Instruct fine-tuning, mindspore backend. Extra arguments are config overrides: training.lr=2e-5 ...
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
CONFIG=${CONFIG:-$(dirname "$0")/finetune_qwen2_5_vl_3b.yaml}
mkdir -p logs
msrun --worker_num "$WORLD_SIZE" --local_worker_num "$NPUS_PER_NODE" --node_rank "$NODE_RANK" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" --log_dir msrun_log --join True \
    "$(command -v mmx)" finetune --backend mindspore --config "$CONFIG" "$@" 2>&1 | tee logs/finetune_qwen2_5_vl_3b.log
