# Sourced by examples/<backend>/<model>/finetune_*.sh: the guides' launch variables and one launcher per backend.
#
#   launch torch|mindspore CONFIG LOG_NAME [config overrides ...]
#
# NPUS_PER_NODE, MASTER_ADDR, MASTER_PORT, NNODES and NODE_RANK follow the guides' scripts (set them in the
# environment or in the calling script). NPUS_PER_NODE x NNODES processes train data parallel: every device holds the
# whole model with its fp32 master weights and AdamW state (so memory per device is what one device alone needs: a
# 7B model needs room for ~16 bytes per trainable parameter plus activations, or freeze more of it), takes its share
# of each global batch's micro-batches, and the gradients are summed over all devices every step.
# training.global_batch_size must be a multiple of micro_batch_size x NPUS_PER_NODE x NNODES. Tensor / pipeline
# parallel training is not implemented (the model-parallel size keys must stay 1). On accelerators set MMX_DEVICE=npu
# (or cuda) without an index: each process then takes the device of its local rank.
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

# run_tiny torch|mindspore FAMILY CONFIG [config overrides ...]: in the current directory, build a tiny FAMILY
# checkpoint and the digits set once (tiny_FAMILY/), convert it, fine-tune with CONFIG in one process, export to HF.
run_tiny() {
    local backend=$1 family=$2 config=$3
    shift 3
    python - "$family" <<'PY'
import os, sys
from mmx.convert.drivers import hf_to_mm
from mmx.data.digits import make_digits_vqa
from mmx.tiny import make_tiny_checkpoint
family = sys.argv[1]
if not os.path.exists(f"tiny_{family}/mm/latest_checkpointed_iteration.txt"):
    make_tiny_checkpoint(f"tiny_{family}/hf", family=family)
    make_digits_vqa(f"tiny_{family}/digits", size=56)
    hf_to_mm(f"tiny_{family}/hf", f"tiny_{family}/mm")
PY
    # The tiny run's outputs are its own and cheap to remake: a second run replaces them (training.overwrite keeps
    # the old checkpoint until the new one is complete).
    mmx finetune --backend "$backend" --config "$config" training.overwrite=true "$@"
    mmx convert mm_to_hf --mm-dir "tiny_$family/save" --save-hf-dir "tiny_$family/save_hf" --overwrite
}
