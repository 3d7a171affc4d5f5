"""Where one training step's time goes, on the backend of ``MMX_BACKEND``: the bench/train.py model and equal-work
batch, each phase timed on its own (best of ``--repeats``; kernels are synchronous on CPU in both backends).

    MMX_BACKEND=torch python bench/step_profile.py [--layers 4] [--batch 2] [--repeats 3] [--dir DIR]
    MMX_BACKEND=mindspore python bench/step_profile.py ...

Phases: ``vision_forward`` (the image encoder alone), ``forward`` (the whole loss, no gradient), ``loss_op``
(ops.linear_cross_entropy alone on the step's N supervised rows: forward + backward), ``forward_backward``
(the backend's accumulate_grads), ``clip`` (clip_grad_norm), ``optimizer`` (AdamW.step), ``step`` (mmx.train.loop's
train_step: all of them). ``--dir`` reuses a checkpoint + batch written by an earlier run (``--keep``), so both
backends time the same weights and batch. Prints one JSON line per phase and a total line.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train import build_checkpoint, make_batch, trainable_model  # noqa: E402 - bench/train.py's model and batch


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", help="a directory from an earlier --keep run (checkpoint + batch)")
    parser.add_argument("--keep", help="write the checkpoint and batch here and keep them")
    parser.add_argument("--phases", default="vision_forward,forward,loss_op,forward_backward,clip,optimizer,step")
    args = parser.parse_args()
    work = args.dir or args.keep or tempfile.mkdtemp(prefix="mmx_step_profile_")
    hf_dir = os.path.join(work, "hf")
    batch_path = os.path.join(work, "batch_equal.npz")
    if not os.path.exists(batch_path):
        os.environ.setdefault("MMX_BACKEND", "torch")
        build_checkpoint(hf_dir, args.hidden, args.layers, 151936)
        np.savez(batch_path, **make_batch(hf_dir, args.batch, 448, 32, 220, "every", 151936))
        if args.keep:
            print(f"kept {work}")
            return
    batch = dict(np.load(batch_path))

    from mmx import backend, ops
    from mmx.train.loop import lm_loss, prepare_micro_batch, train_step
    from mmx.train.loss import token_weights

    model, train, params, optimizer = trainable_model(hf_dir)
    prepared = [prepare_micro_batch(model, batch, token_weights([batch], "per_token")[0])]
    inputs, targets, weights = prepared[0]
    rng = np.random.default_rng(0)
    hidden = ops.tensor(rng.standard_normal((int(targets.shape[0]), args.hidden)).astype(np.float32))
    embedding = model.text_decoder.embedding.word_embeddings.weight
    grad = backend.get().autograd.value_and_grad
    pixels = ops.tensor(batch["pixel_values"])
    state = {}

    def forward_backward():
        state["loss"], state["grads"] = train.accumulate_grads(params, lambda item: lm_loss(model, *item), prepared)

    def clip():
        train.clip_grad_norm(state["grads"], 1.0)

    def loss_op():
        value, grads = grad(lambda h, w: ops.linear_cross_entropy(h, w, targets, weights), [hidden, embedding])
        ops.to_numpy(grads[1][:1])

    phases = {
        "vision_forward": lambda: ops.to_numpy(model.image_encoder(pixels, batch["image_grid_thw"])[0][:1]),
        "forward": lambda: float(ops.to_numpy(lm_loss(model, *prepared[0]))),
        "loss_op": loss_op,
        "forward_backward": forward_backward,
        "clip": clip,
        "optimizer": lambda: (optimizer.step(state["grads"], 1e-5), ops.to_numpy(params[-1][:1])),
        "step": lambda: train_step(train, params, optimizer, lambda item: lm_loss(model, *item), prepared, 1e-5, 1.0),
    }
    forward_backward()   # warm-up; also the gradients clip / optimizer time
    total = {}
    for name in args.phases.split(","):
        phases[name]()   # warm-up of the phase
        total[name] = best_of(phases[name], args.repeats)
        print(json.dumps({"backend": backend.name(), "phase": name, "seconds": round(total[name], 4)}), flush=True)
    print(json.dumps({"backend": backend.name(), "loss": state["loss"], "rows": int(targets.shape[0]),
                      "params": sum(int(np.prod(p.shape)) for p in params)}))


if __name__ == "__main__":
    main()
