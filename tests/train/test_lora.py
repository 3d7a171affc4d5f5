"""LoRA training parity, 20 fp32 steps on the tiny Qwen2.5-VL and GLM-4.1V with real digit images: mmx-torch with
``training.lora`` vs transformers + peft (same rank, alpha, targets, the same initial A / B copied over) + torch
AdamW; mmx-MindSpore vs mmx-torch (torch in a subprocess). Qwen2.5-VL runs ``all-linear`` (the fused vision qkv and
gate/up, the LLM's fused qkv and gate/up, the merger) with ``modules_to_save: [lm_head]``; GLM-4.1V runs HF names
that take *parts* of fused Linears (q and v of ``linear_qkv``, up of ``linear_fc1``), so a LoRA inside a fused
projection must equal PEFT's separate ones. Only adapters (+ modules_to_save) train; every base weight stays
bit-identical."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lora_runner import LORA, _trainer, mmx_lora_run
from parity_runner import STEPS, TRAINING, batches, prepare
from tolerances import TRAIN_TOLERANCE

LOGITS_ATOL = 1e-4   # the bar for exported adapters (fp32)

HERE = os.path.dirname(os.path.abspath(__file__))

def peft_losses(work, family, initial):
    """transformers + peft (LoRA of the same targets, ``initial`` {PEFT key: array} A / B copied in) + torch
    AdamW (weight decay on ndim >= 2, as mmx) + clip_grad_norm_, over the Trainer's batches."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    hf_dir, _ = prepare(work, family)
    model = AutoModelForImageTextToText.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager")
    spec = LORA[family]
    model = get_peft_model(model, LoraConfig(r=spec["rank"], lora_alpha=spec["alpha"], lora_dropout=0.0,
                                             target_modules=spec["target_modules"],
                                             modules_to_save=spec.get("modules_to_save")))
    state = model.state_dict()
    copied = set()
    with torch.no_grad():
        for key, value in initial.items():
            name = key.replace(".lora_A.weight", ".lora_A.default.weight").replace(
                ".lora_B.weight", ".lora_B.default.weight")
            if name not in state:   # modules_to_save: the trained copy
                module, leaf = key.rsplit(".", 1)
                name = f"{module}.modules_to_save.default.{leaf}"
            state[name].copy_(torch.from_numpy(np.asarray(value)))
            copied.add(name)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert sorted(trainable) == sorted(copied), sorted(set(trainable) ^ copied)[:5]
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": TRAINING["weight_decay"]},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=TRAINING["lr"])
    image_token = model.base_model.model.config.image_token_id
    losses = []
    for batch in batches(work, family):
        inputs = {key: torch.from_numpy(np.ascontiguousarray(batch[key])) for key in
                  ("input_ids", "attention_mask", "labels", "pixel_values", "image_grid_thw") if key in batch}
        inputs["mm_token_type_ids"] = torch.from_numpy(np.where(batch["input_ids"] == image_token, 1, 0))
        loss = model(**inputs).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, TRAINING["clip_grad"])
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def initial_peft_adapters(work, family):
    """The adapters mmx starts from, as PEFT keys (the reference copies them in)."""
    from mmx import lora, nn, ops

    trainer = _trainer(work, family, train_iters=1)
    tensors = {name: ops.to_numpy(value) for name, value in nn.state_dict(trainer.model).items()
               if name in trainer.checkpoint_names}
    return lora.peft_state(tensors, trainer.lora["plan"], trainer.metadata)


@pytest.mark.backend("torch")
@pytest.mark.parametrize("family", sorted(LORA))
def test_lora_matches_transformers_peft_adamw(tmp_path, family):
    from mmx import nn, ops

    work = str(tmp_path)
    initial = initial_peft_adapters(work, family)
    ours, trainer = mmx_lora_run(work, family)
    reference = peft_losses(work, family, initial)
    assert len(ours) == len(reference) == STEPS
    assert reference[-1] < reference[0] * 0.9   # it trains
    relative = [abs(a - b) / abs(b) for a, b in zip(ours, reference)]
    assert max(relative) <= TRAIN_TOLERANCE["parity_vs_transformers_rel"], relative
    # only adapters (+ modules_to_save) trained: every other weight is the base's, bit for bit
    from mmx.train.finetune import read_weights

    _, base = read_weights(prepare(work, family)[0])
    after = {name: ops.to_numpy(value) for name, value in nn.state_dict(trainer.model).items()}
    untouched = [name for name in base if name not in trainer.checkpoint_names]
    assert untouched and all(np.array_equal(after[name], base[name]) for name in untouched)
    assert sorted(trainer.optimizer.names) == sorted(trainer.checkpoint_names)
    assert trainer.sizes["optimizer_state_bytes"] == 8 * trainer.sizes["trainable_parameters"]
    assert trainer.sizes["trainable_parameters"] == sum(int(np.prod(after[name].shape))
                                                        for name in trainer.checkpoint_names)
    with open(os.path.join(work, "logs", "metrics.jsonl")) as handle:   # logged in the run's first record
        first = json.loads(handle.readline())
    assert first["trainable_parameters"] == trainer.sizes["trainable_parameters"]
    assert first["optimizer_state_bytes"] == trainer.sizes["optimizer_state_bytes"]


@pytest.mark.backend("mindspore")
@pytest.mark.parametrize("family", sorted(LORA))
def test_lora_mindspore_matches_torch(tmp_path, family):
    ours, _ = mmx_lora_run(str(tmp_path), family)
    run = subprocess.run([sys.executable, os.path.join(HERE, "lora_runner.py"), str(tmp_path),
                          str(tmp_path / "torch.npz"), family], capture_output=True, text=True, timeout=900,
                         env=dict(os.environ, MMX_BACKEND="torch"))
    assert run.returncode == 0, run.stderr[-3000:]
    reference = np.load(str(tmp_path / "torch.npz"))["losses"]
    assert len(ours) == len(reference) == STEPS
    relative = [abs(a - b) / abs(b) for a, b in zip(ours, reference)]
    assert max(relative) <= TRAIN_TOLERANCE["parity_mindspore_vs_torch_rel"], relative


def _logits_inputs(work, family):
    return batches(work, family)[0]


@pytest.mark.backend("torch")
def test_lora_checkpoint_exports_to_peft_and_merged_hf_with_equal_logits(tmp_path):
    """3 LoRA steps saved (adapters + lm_head only), ``mmx convert lora_to_peft``, then
    ``peft.PeftModel.from_pretrained`` on the transformers model: logits equal mmx's (fp32, image batch); the same
    for ``mmx convert mm_to_hf --merge-lora`` loaded by transformers alone; ``mmx infer --adapter SAVE`` decodes
    greedily like transformers + peft."""
    import torch
    from click.testing import CliRunner
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from mmx import ops
    from mmx.cli import main
    from mmx.train import checkpoint as ckpt
    from mmx.train.loop import model_inputs

    work, family = str(tmp_path), "qwen2_5_vl"
    _, trainer = mmx_lora_run(work, family, train_iters=3, save=str(tmp_path / "lora"))
    saved = ckpt.load_checkpoint(str(tmp_path / "lora"))
    assert sorted(saved["model"]) == sorted(trainer.checkpoint_names)   # no base weight in the checkpoint
    assert saved["metadata"]["lora"]["base"]["sha256"]
    result = CliRunner().invoke(main, ["convert", "lora_to_peft", "--mm-dir", str(tmp_path / "lora"),
                                       "--save-dir", str(tmp_path / "peft")])
    assert result.exit_code == 0, result.output
    batch = _logits_inputs(work, family)
    ours = ops.to_numpy(trainer.model(**model_inputs(trainer.model, batch)))
    hf_dir, _ = prepare(work, family)
    base = AutoModelForImageTextToText.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager")
    peft = PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    inputs = {key: torch.from_numpy(np.ascontiguousarray(batch[key])) for key in
              ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
    inputs["mm_token_type_ids"] = torch.from_numpy(np.where(batch["input_ids"] == base.config.image_token_id, 1, 0))
    with torch.no_grad():
        theirs = peft(**inputs).logits.numpy()
    mask = batch["attention_mask"].astype(bool)
    diff = float(np.abs(ours[mask] - theirs[mask]).max())
    assert diff <= LOGITS_ATOL, diff
    # the adapter changed the model: the base alone is far from it
    with torch.no_grad(), peft.disable_adapter():
        plain = peft(**inputs).logits.numpy()
    assert float(np.abs(plain[mask] - theirs[mask]).max()) > 100 * LOGITS_ATOL
    # mm_to_hf --merge-lora: full HF weights (the adapters merged into the fused and plain Linears, lm_head
    # replaced) that transformers loads alone
    result = CliRunner().invoke(main, ["convert", "mm_to_hf", "--merge-lora", "--mm-dir", str(tmp_path / "lora"),
                                       "--save-hf-dir", str(tmp_path / "merged")])
    assert result.exit_code == 0, result.output
    merged = AutoModelForImageTextToText.from_pretrained(str(tmp_path / "merged"), dtype=torch.float32,
                                                         attn_implementation="eager").eval()
    with torch.no_grad():
        merged_logits = merged(**inputs).logits.numpy()
    diff = float(np.abs(ours[mask] - merged_logits[mask]).max())
    assert diff <= LOGITS_ATOL, diff
    # mmx infer --adapter with the mmx save itself: greedy tokens equal transformers + peft's on the export
    from transformers import AutoProcessor

    from mmx import infer
    from mmx.infer.prompts import encode

    conversations = [[infer.user_message("The quick brown fox jumps over the lazy dog.")]]
    encoded = encode(AutoProcessor.from_pretrained(hf_dir), conversations)
    with torch.no_grad():
        expected = peft.generate(**{k: torch.tensor(v) for k, v in encoded.items()}, max_new_tokens=6,
                                 do_sample=False)[0, encoded["input_ids"].shape[1]:].tolist()
    reply = infer.load(hf_dir, adapter=str(tmp_path / "lora")).generate(conversations, do_sample=False,
                                                                         max_new_tokens=6)[0]
    assert list(map(int, reply.token_ids)) == expected[:len(reply.token_ids)] and reply.token_ids


def test_lora_checkpoint_of_the_other_backend_resumes_on_the_same_curve(tmp_path):
    """2 LoRA steps on the other backend (adapters + AdamW state of the adapters), 2 more here == 4 uninterrupted."""
    from mmx import backend

    other = {"torch": "mindspore", "mindspore": "torch"}[backend.name()]
    family = "glm4v"
    run = subprocess.run([sys.executable, os.path.join(HERE, "lora_runner.py"), str(tmp_path),
                          str(tmp_path / "first.npz"), family, "train_iters=2", f"save={tmp_path / 'other'}"],
                         capture_output=True, text=True, timeout=900, env=dict(os.environ, MMX_BACKEND=other))
    assert run.returncode == 0, run.stderr[-3000:]
    first = list(np.load(str(tmp_path / "first.npz"))["losses"])
    resumed, _ = mmx_lora_run(str(tmp_path), family, train_iters=4, load=str(tmp_path / "other"),
                              save=str(tmp_path / "here"))
    uninterrupted, _ = mmx_lora_run(str(tmp_path), family, train_iters=4)
    assert len(first) == 2 and len(resumed) == 2
    relative = [abs(a - b) / abs(b) for a, b in zip(first + resumed, uninterrupted)]
    assert max(relative) <= TRAIN_TOLERANCE["cross_backend_loss_rel"], relative


def test_lora_dropout_trains_and_resumes_exactly(tmp_path):
    """lora dropout 0.3 (masks from the backend's generator, one per piece): step 1 equals the dropout-free loss
    (lora_B starts at 0, so the adapters add nothing yet), later steps differ; 2 + 2 steps resumed in this process
    (RNG state from the checkpoint) equal 4 uninterrupted steps."""
    from mmx import backend

    work, family = str(tmp_path), "glm4v"
    dropout = dict(LORA[family], dropout=0.3)
    plain, _ = mmx_lora_run(work, family, train_iters=4)
    ours, _ = mmx_lora_run(work, family, train_iters=4, lora=dropout)
    assert ours[0] == plain[0] and all(a != b for a, b in zip(ours[1:], plain[1:]))
    first, _ = mmx_lora_run(work, family, train_iters=2, lora=dropout, save=str(tmp_path / "first"))
    resumed, _ = mmx_lora_run(work, family, train_iters=4, lora=dropout, load=str(tmp_path / "first"),
                              save=str(tmp_path / "second"))
    tolerance = TRAIN_TOLERANCE["resume_torch" if backend.name() == "torch" else "resume_mindspore"]
    relative = [abs(a - b) / abs(b) for a, b in zip(first + resumed, ours)]
    assert len(first + resumed) == 4 and max(relative) <= tolerance, relative
