"""Runs a tiny training job (TinyVLM on synthetic samples) in this process or as a subprocess script.

``python train_runner.py OUT.npz SAVE [key=value ...] [then OUT2.npz SAVE2 [key=value ...] ...]`` trains with the
overrides and saves the per-step losses and final weights to OUT.npz (then runs the next job in the same process); the
tests use it to run the other backend (cross-backend resume) and to kill a run. ``kill_during_save=N`` SIGKILLs the
process while it writes checkpoint N (after the model file, before the optimizer file), the crash the atomic save must
survive. Launched by torchrun / msrun it trains data parallel and rank r of a multi-process run writes OUT with
``.rank{r}`` before ``.npz``. ``nan_sample=K`` plants NaN pixels in sample K; the NonFiniteLossError message then goes
to OUT with ``.txt`` for ``.npz`` and the next job runs. A job ``cli ARGS ...`` runs ``mmx ARGS ...`` (e.g. ``cli
finetune --config F``) in the launched processes. A job ``shardload OUT.npz MM_DIR`` builds MM_DIR's model as a
fully sharded ``mmx finetune`` does (rank-local loading) and writes each rank's local shard of every parameter
(``p/NAME``) and the row of the whole tensor it starts at (``row/NAME``); ``shardload OUT.npz MM_DIR EP`` does so
with expert parallel of size EP too (an expert shard's row counts from expert 0 of the whole stack).
"""
import os
import signal
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mmx import backend, nn, ops  # noqa: E402
from mmx.train import checkpoint  # noqa: E402
from mmx.train.config import load_config  # noqa: E402
from mmx.train.loop import NonFiniteLossError, Trainer  # noqa: E402
from train_reference import SampleStream, collate, make_dataset, make_model  # noqa: E402

BASE = {"seed": 7, "train_iters": 4, "micro_batch_size": 2, "global_batch_size": 4, "lr": 3e-2, "min_lr": 3e-3,
        "lr_warmup_iters": 2, "weight_decay": 0.01, "clip_grad": 1.0, "loss_type": "per_token",
        "log_interval": 100, "progress_bar": False, "peak_tflops": 1.0}


def train(save=None, load=None, log_dir=None, streaming=False, nan_sample=None, **overrides):
    """(per-step losses of this run, final weights {name: numpy}, the Trainer). ``streaming``: batches come from a
    SampleStream (checkpointed by its state; each data-parallel rank draws its own) instead of the map-style
    sampler. ``nan_sample``: that sample's pixels are NaN."""
    training = load_config(base={"training": dict(BASE, save=save, load=load, **overrides)})["training"]
    dataset = make_dataset(12)
    if nan_sample is not None:
        dataset[nan_sample]["pixel_values"] = np.full_like(dataset[nan_sample]["pixel_values"], np.nan)
    rank, _ = backend.get().distributed.init()
    stream = SampleStream(dataset, training["micro_batch_size"], seed=rank) if streaming else None
    trainer = Trainer(make_model(), dataset, collate, training, {"model_type": "tiny"}, log_dir=log_dir or save,
                      stream=stream)
    records = trainer.run()
    # whole tensors (a fully sharded model's are gathered: a collective, every rank in the same order)
    weights = {name: ops.to_numpy(trainer.comm.full_tensor(value))
               for name, value in nn.state_dict(trainer.model).items()}
    return [r["loss"] for r in records], weights, trainer


def _kill_during(iteration):
    write = checkpoint._write_safetensors

    def write_then_die(path, tensors, metadata=None):
        if os.path.basename(path) == "optimizer.safetensors" and f"iter_{iteration:07d}" in path:
            os.kill(os.getpid(), signal.SIGKILL)
        return write(path, tensors, metadata)

    checkpoint._write_safetensors = write_then_die


def main(args):
    import yaml

    out, save = args[0], args[1]
    options = {key: yaml.safe_load(value) for key, value in (arg.split("=", 1) for arg in args[2:])}
    if "kill_during_save" in options:
        _kill_during(options.pop("kill_during_save"))
    rank, world_size = backend.get().distributed.init()
    if world_size > 1:
        out = out.replace(".npz", f".rank{rank}.npz")
    try:
        losses, weights, trainer = train(save=save, **options)
    except NonFiniteLossError as error:
        with open(out.replace(".npz", ".txt"), "w") as handle:
            handle.write(str(error))
        return
    # a sharded optimizer's measured share of the AdamW state (MindSpore fully_shard)
    local_bytes = getattr(trainer.optimizer, "local_state_bytes", None)
    extra = {"local_state_bytes": np.array(local_bytes())} if local_bytes else {}
    np.savez(out, losses=np.array(losses), **extra, **{f"w/{name}": value for name, value in weights.items()})


def shard_load(out, mm_dir, ep_size="1"):
    """The ``shardload`` job (module docstring)."""
    from mmx.expert_parallel import local_experts
    from mmx.train.finetune import build_model

    rank, world_size = backend.get().distributed.init()
    ep_size = int(ep_size)
    model, _, _ = build_model({"init_from_hf_path": mm_dir, "image_encoder": {}, "text_decoder": {}},
                              {"data_parallel": "fully_shard", "expert_model_parallel_size": ep_size}, world_size, rank)
    comm, arrays = backend.get().distributed, {}
    for name, param in nn.named_parameters(model):
        local = param.to_local() if hasattr(param, "to_local") else param
        arrays[f"p/{name}"] = ops.to_numpy(local)
        first = 0
        if ".experts." in name and ep_size > 1:   # this rank's run of experts starts there
            first = local_experts(int(param.shape[0]) * ep_size, ep_size, rank % ep_size).start
        arrays[f"row/{name}"] = np.array(first + comm.local_rows(param))
    np.savez(out.replace(".npz", f".rank{rank}.npz"), **arrays)


if __name__ == "__main__":
    jobs = [[]]
    for arg in sys.argv[1:]:
        if arg == "then":
            jobs.append([])
        else:
            jobs[-1].append(arg)
    for job in jobs:  # one launch (msrun / torchrun start-up is most of a tiny job's time), several jobs
        if job[0] == "cli":
            from mmx.cli import main as mmx_command

            mmx_command(job[1:], standalone_mode=False)
        elif job[0] == "shardload":
            shard_load(*job[1:])
        else:
            main(job)
