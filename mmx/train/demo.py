"""``mmx demo``: the whole mmx workflow on a tiny Qwen2.5-VL and real handwritten digits, offline, in minutes.

    1. mmx.tiny          a tiny random Qwen2.5-VL HF checkpoint (tokenizer, processor, chat template)
    2. mmx.data.digits   scikit-learn's 1,797 handwritten digits as a VQA set ("What digit is this?" → "7"),
                         80 % train / 20 % held out
    3. hf_to_mm          convert to the mm layout
    4. finetune          AdamW + warmup/cosine on the train split (the same Trainer as `mmx finetune`)
    5. evaluate          greedy answers of the fine-tuned mm checkpoint (mmx.infer) on the held-out digits:
                         exact-match accuracy
    6. mm_to_hf          export, then transformers answers a few held-out digits: they must equal mmx's
    The last line printed is ``accuracy=<float>``.

The model is mmx.tiny's Qwen2.5-VL with a wider vision tower (the digits must be read by a ViT trained from
scratch). Digits are written at 56x56 px, the tiny processor's minimum, so training, mmx.infer and transformers all
see the same 4x4 patches (4 merged vision tokens) without any pixel-limit override; one step stays cheap on a CPU
and the same recipe reaches ≥ 0.9 on torch and on MindSpore.
"""
import json
import os
import subprocess
import sys
import time

from mmx.data.digits import QUESTION, make_digits_vqa

TINY_OVERRIDES = {"vision_hidden_size": 64, "vision_intermediate_size": 128, "vision_out_hidden_size": 64,
                  "vision_num_heads": 4}
DIGIT_SIZE = 56
TRAINING = {"seed": 0, "train_iters": 180, "micro_batch_size": 16, "global_batch_size": 16, "lr": 2e-3,
            "min_lr": 1e-4, "lr_warmup_iters": 15, "lr_decay_style": "cosine", "weight_decay": 0.01,
            "clip_grad": 1.0, "loss_type": "per_token", "log_interval": 20, "save_interval": 0}
HF_CHECK_SAMPLES = 8


def _stage(echo, text):
    echo(f"[demo] {text}")


def build_inputs(out_dir, echo):
    """Steps 1–3: (mm checkpoint dir, digits info)."""
    from mmx.convert.drivers import hf_to_mm
    from mmx.tiny import make_tiny_checkpoint

    hf_dir = make_tiny_checkpoint(os.path.join(out_dir, "hf_tiny"), family="qwen2_5_vl", **TINY_OVERRIDES)
    digits = make_digits_vqa(os.path.join(out_dir, "digits"), size=DIGIT_SIZE)
    _stage(echo, f"tiny Qwen2.5-VL at {hf_dir}; digits: {digits['num_train']} train / {digits['num_test']} held out")
    mm_dir = os.path.join(out_dir, "mm_tiny")
    hf_to_mm(hf_dir, mm_dir, overwrite=True)   # the demo owns its --out folder: a rerun replaces its outputs
    _stage(echo, f"converted hf_to_mm → {mm_dir}")
    return mm_dir, digits


def demo_config(mm_dir, digits, save_dir, steps=None):
    """The finetune config of the demo (what `mmx finetune --config` would read)."""
    from mmx.train.config import load_config

    training = dict(TRAINING, save=save_dir, train_iters=steps or TRAINING["train_iters"], overwrite=True)
    data = {"dataset": digits["train"], "dataset_dir": digits["dataset_dir"], "cutoff_len": 128, "seed": 0}
    return load_config(base={"model": {"init_from_hf_path": mm_dir}, "data": data, "training": training})


def evaluate(model_dir, records, image_root, batch_size=64):
    """(exact-match accuracy, answers) of mmx.infer's greedy answers on ``records`` (mllm-format samples)."""
    import mmx.infer

    pipeline = mmx.infer.load(model_dir)
    answers = []
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        conversations = [[mmx.infer.user_message(QUESTION, images=[os.path.join(image_root, r["image"])])]
                         for r in chunk]
        answers += [reply.text.strip() for reply in pipeline.generate(conversations, max_new_tokens=3)]
    truth = [r["conversations"][1]["value"] for r in records]
    return sum(a == t for a, t in zip(answers, truth)) / len(records), answers


def transformers_answers(hf_dir, image_paths):
    """transformers' greedy answers, computed in a subprocess (transformers runs on torch; this process may be
    MindSpore)."""
    code = ("import json, sys; from mmx.reference import hf_answers; "
            "print(json.dumps(hf_answers(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3])))")
    run = subprocess.run([sys.executable, "-c", code, hf_dir, json.dumps(image_paths), QUESTION],
                         capture_output=True, text=True, env=dict(os.environ, MMX_BACKEND="torch"))
    if run.returncode:
        raise RuntimeError(f"transformers check failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def run_demo(out_dir, steps=None, echo=print):
    """The six steps; returns the held-out accuracy (also printed last as ``accuracy=<float>``)."""
    from mmx.convert.drivers import mm_to_hf
    from mmx.train.finetune import finetune

    start = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    mm_dir, digits = build_inputs(out_dir, echo)
    save_dir = os.path.join(out_dir, "finetuned")
    config = demo_config(mm_dir, digits, save_dir, steps)
    _stage(echo, f"finetune: {config['training']['train_iters']} steps × {config['training']['global_batch_size']} "
                 f"samples → {save_dir}")
    finetune(config, echo=echo)
    _stage(echo, f"trained in {time.perf_counter() - start:.0f} s (so far); loss curve {save_dir}/logs/loss_curve.png")

    with open(digits["test"]) as handle:
        held_out = json.load(handle)
    accuracy, answers = evaluate(save_dir, held_out, digits["dataset_dir"])
    _stage(echo, f"mmx greedy answers on {len(held_out)} held-out digits: accuracy {accuracy:.4f}")

    hf_out = os.path.join(out_dir, "finetuned_hf")
    mm_to_hf(save_dir, hf_out, overwrite=True)
    check = held_out[:HF_CHECK_SAMPLES]
    hf = transformers_answers(hf_out, [os.path.join(digits["dataset_dir"], r["image"]) for r in check])
    agree = sum(a == b for a, b in zip(hf, answers[:HF_CHECK_SAMPLES]))
    _stage(echo, f"exported mm_to_hf → {hf_out}; transformers answers {hf} vs mmx {answers[:HF_CHECK_SAMPLES]}: "
                 f"{agree}/{len(check)} equal")
    if agree != len(check):
        raise RuntimeError(f"transformers and mmx disagree on {len(check) - agree} of {len(check)} held-out digits "
                           f"after mm_to_hf ({hf} vs {answers[:HF_CHECK_SAMPLES]})")
    _stage(echo, f"total {time.perf_counter() - start:.0f} s")
    echo(f"accuracy={accuracy:.4f}")
    return accuracy
