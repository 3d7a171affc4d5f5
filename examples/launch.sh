# Sourced by examples/<backend>/<model>/finetune_*.sh: the guides' launch variables and one launcher per backend.
#
#   launch torch|mindspore CONFIG LOG_NAME [config overrides ...]
#
# NPUS_PER_NODE, MASTER_ADDR, MASTER_PORT, NNODES and NODE_RANK follow the guides' scripts (set them in the
# environment or in the calling script). mmx finetune runs one process today: data / tensor / pipeline parallel
# training is not implemented yet and the trainer refuses a world size > 1, so keep NPUS_PER_NODE=1 and NNODES=1
# (a 7B model then needs a device with room for fp32 weights + AdamW state, or freeze more of it).
set -euo pipefail
source /usr/local/Ascend/cann/set_env.sh 2>/dev/null || true   # Ascend toolkit, when present
export TOKENIZERS_PARALLELISM=false
NPUS_PER_NODE=${NPUS_PER_NODE:-1}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-29501}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
WORLD_SIZE=$((NPUS_PER_NODE * NNODES))

launch() {
    local backend=$1 config=$2 log_name=$3
    shift 3
    mkdir -p logs
    case $backend in
        torch)
            torchrun --nproc_per_node "$NPUS_PER_NODE" --nnodes "$NNODES" --node_rank "$NODE_RANK" \
                --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
                "$(command -v mmx)" finetune --backend torch --config "$config" "$@" 2>&1 | tee "logs/$log_name.log" ;;
        mindspore)
            msrun --worker_num "$WORLD_SIZE" --local_worker_num "$NPUS_PER_NODE" --node_rank "$NODE_RANK" \
                --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" --log_dir msrun_log --join True \
                "$(command -v mmx)" finetune --backend mindspore --config "$config" "$@" 2>&1 | tee "logs/$log_name.log" ;;
        *) echo "launch: unknown backend $backend (torch or mindspore)" >&2; return 2 ;;
    esac
}
