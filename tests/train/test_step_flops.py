"""MFU's numerator: the FLOPs a step executes, counted by hand from the config here (every matmul and attention
square written out) and compared with what the trainer logs (mmx.train.flops through Trainer.step), for a tiny dense
Qwen2.5-VL (window + full vision attention) and a tiny Qwen3-VL-MoE (active experts, deepstack mergers), with the
vision tower trained, frozen, or frozen with the projector trained, on padded and on packed batches."""
import numpy as np
import pytest

from mmx import models
from mmx.tiny import TOKEN_ID, make_tiny_checkpoint
from mmx.train.config import load_config
from mmx.train.flops import StepFlops, known_peak_flops, peak_flops, step_flops
from mmx.train.freeze import apply_freeze
from mmx.train.loop import Trainer, prepare_micro_batch
from mmx.train.loss import shifted_targets, token_weights

GRID = (1, 4, 8)          # patches per image: 32, merged 2 x 4 = 8 image tokens
FREEZE = {
    "trained": {},
    "frozen": {"image_encoder": {"vision_encoder": {"freeze": True}, "vision_projector": {"freeze": True}}},
    "projector_trained": {"image_encoder": {"vision_encoder": {"freeze": True}}},
}


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl_moe"])
def family_dir(request, tmp_path_factory):
    return request.param, make_tiny_checkpoint(str(tmp_path_factory.mktemp(request.param)), request.param)


def _batch(model, packed):
    """Two samples of 5 + 8 image + 6 (and 4 + 8 image + 3) tokens, answers supervised: padded to one 2 x 19 batch,
    or packed into one row of 19 + 15 with cu_seqlens."""
    vision = model.config.vision
    patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2
    rng = np.random.default_rng(0)
    rows = []
    for before, after in ((5, 6), (4, 3)):
        ids = np.concatenate([rng.integers(10, 300, before), [TOKEN_ID["<|image_pad|>"]] * 8,
                              rng.integers(10, 300, after)]).astype(np.int64)
        labels = np.full_like(ids, -100)
        labels[-after:] = ids[-after:]
        rows.append((ids, labels))
    pixels = rng.standard_normal((2 * int(np.prod(GRID)), patch_dim)).astype(np.float32)
    grid = np.array([GRID, GRID], np.int64)
    if packed:
        return {"input_ids": np.concatenate([r[0] for r in rows])[None],
                "labels": np.concatenate([r[1] for r in rows])[None],
                "attention_mask": np.ones((1, 34), np.int64), "cu_seqlens": np.array([0, 19, 34], np.int32),
                "pixel_values": pixels, "image_grid_thw": grid}
    ids, labels, mask = (np.zeros((2, 19), np.int64), np.full((2, 19), -100, np.int64),
                         np.zeros((2, 19), np.int64))
    for k, (row_ids, row_labels) in enumerate(rows):
        ids[k, :len(row_ids)], labels[k, :len(row_ids)], mask[k, :len(row_ids)] = row_ids, row_labels, 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "pixel_values": pixels,
            "image_grid_thw": grid}


def hand_count(config, batch, vision_encoder_trains, projector_trains, llm_trains=True):
    """Executed FLOPs of one forward + backward, written out from the config."""
    llm_factor = 3 if llm_trains else 1    # trained: forward, input and weight gradients; nothing trains: forward
    text, vision = config.text, config.vision
    rows, length = batch["input_ids"].shape
    positions = rows * length                                    # every position runs the LLM, padding included
    computed = int((shifted_targets(batch) != -100).sum())       # the output layer: supervised targets only
    c, d, hq, hkv = text.hidden_size, text.head_dim, text.num_heads, text.num_kv_heads
    attention_weights = c * (hq + 2 * hkv) * d + hq * d * c
    llm = 0
    for j in range(text.num_layers):
        if j in text.moe_layers:   # router + the top-k active experts' gate/up and down
            mlp = c * text.num_experts + text.num_experts_per_tok * 3 * c * text.moe_intermediate_size
        else:
            mlp = 3 * c * text.intermediate_size
        llm += 2 * (attention_weights + mlp) * positions * llm_factor
    if "cu_seqlens" in batch:
        squares = sum(int(n) ** 2 for n in np.diff(batch["cu_seqlens"]))
    else:
        squares = rows * length ** 2                               # a padded row attends over all S positions
    llm += text.num_layers * 4 * squares * hq * d * llm_factor
    output = 2 * text.vocab_size * c * computed * llm_factor

    cv, fv, merge = vision.hidden_size, vision.intermediate_size, vision.spatial_merge_size
    patches = 2 * int(np.prod(GRID))
    merged = patches // merge ** 2
    patch_in = vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2
    gated = config.family == "qwen2_5_vl"                           # Qwen2.5-VL's vision MLP is SwiGLU
    block = 4 * cv * cv + (3 if gated else 2) * cv * fv
    # frames: 32 patches each; Qwen2.5-VL windows: 2x2 merged tokens = 16 patches, two per frame
    frame_squares, window_squares = 2 * 32 ** 2, 4 * 16 ** 2
    attention = 0
    for i in range(vision.depth):
        windowed = vision.window_size and i not in vision.fullatt_block_indexes
        attention += 4 * (window_squares if windowed else frame_squares) * cv
    encoder_factor = 3 if vision_encoder_trains else 1             # frozen, nothing upstream: forward only
    embed_factor = 2 if vision_encoder_trains else 1               # pixels need no gradient
    mergers = 1 + len(vision.deepstack_visual_indexes)
    projector_weights = mergers * ((cv * merge ** 2) ** 2 + cv * merge ** 2 * vision.out_hidden_size)
    # a trained projector's norm weight comes before its first matmul, so every projector matmul needs its input
    # gradient as well as its weight gradient
    projector_factor = 3 if projector_trains else 1 + vision_encoder_trains
    vision_flops = 2 * patch_in * cv * patches * embed_factor + \
        (2 * vision.depth * block * patches + attention) * encoder_factor + \
        2 * projector_weights * merged * projector_factor
    return float(llm + output + vision_flops)


def _trainer(model, batch, tmp_path):
    training = load_config(base={"training": {
        "micro_batch_size": 1, "global_batch_size": 1, "train_iters": 1, "lr": 1e-3, "save": None,
        "log_interval": 1, "progress_bar": False, "peak_tflops": 1.0, "loss_type": "per_token"}})["training"]
    return Trainer(model, [0, 1], lambda samples: batch, training, log_dir=str(tmp_path))


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("freeze", list(FREEZE))
def test_logged_flops_equal_the_hand_count(family_dir, freeze, packed, tmp_path):
    family, hf_dir = family_dir
    model = models.build(hf_dir)
    apply_freeze(model, load_config(base={"model": FREEZE[freeze]})["model"])
    batch = _batch(model, packed)
    expected = hand_count(model.config, batch, freeze == "trained", freeze != "frozen")
    records = _trainer(model, batch, tmp_path).run()
    assert records[0]["flops"] == expected
    # both logged fields are rounded to 6 decimals: the logged MFU is the hand count over the logged seconds to that
    assert abs(records[0]["mfu"] - expected / records[0]["seconds"] / 1e12) <= 1e-6


def test_counter_sums_micro_batches_and_drops_frozen_backward(family_dir):
    family, hf_dir = family_dir
    model = models.build(hf_dir)
    shapes = [(name, tuple(p.shape)) for name, p in __import__("mmx").nn.named_parameters(model)]
    batch = _batch(model, False)
    inputs = prepare_micro_batch(model, batch, token_weights([batch], "per_token")[0])[0]
    everything = StepFlops(model.config, shapes, [name for name, _ in shapes])
    nothing = StepFlops(model.config, shapes, [])
    assert step_flops(everything, [inputs, inputs]) == 2 * step_flops(everything, [inputs])
    assert step_flops(everything, [inputs]) == hand_count(model.config, batch, True, True)
    # nothing trains: every matmul and attention square runs forward only
    assert step_flops(nothing, [inputs]) == hand_count(model.config, batch, False, False, llm_trains=False)


def test_peak_comes_from_the_config_the_table_or_a_measurement():
    assert known_peak_flops("NVIDIA H200", "bf16") == 989e12
    assert known_peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert known_peak_flops("Ascend910B2", "fp16") == 376e12
    assert known_peak_flops(None, "fp32") is None
    assert peak_flops(2.5, "NVIDIA H200", "bf16", lambda: 1.0) == (2.5e12, "training.peak_tflops")
    assert peak_flops(None, "NVIDIA H200", "bf16", lambda: 1.0)[0] == 989e12
    assert peak_flops(None, None, "fp32", lambda: 3.0e9) == (3.0e9, "measured fp32 matmul")
