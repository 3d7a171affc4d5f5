"""Packed rows (cu_seqlens) and KV-cache decoding give the same logits as the plain padded forward."""
import numpy as np
import pytest

from mmx import nn, ops, reference
from mmx.models.common.cache import KVCache
from tolerances import MODEL_SAME_BACKEND_ATOL

from model_helpers import model_inputs

SAMPLES = ("image_small", "video", "text")


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "glm4v"])
def test_packed_equals_unpacked(checkpoint, family):
    ckpt = checkpoint(family, family == "qwen2_vl")
    model = ckpt.build()
    batch = reference.build_inputs(ckpt.hf_dir, SAMPLES)
    lengths = batch["attention_mask"].sum(-1)
    def pack(rows):
        return np.concatenate([row[:n] for row, n in zip(rows, lengths)])[None]
    packed = dict(model_inputs(batch), input_ids=pack(batch["input_ids"]), attention_mask=None,
                  mm_token_type_ids=pack(batch["mm_token_type_ids"]),
                  cu_seqlens=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    with nn.inference_mode():
        padded_logits = ops.to_numpy(model(**model_inputs(batch)))
        packed_logits = ops.to_numpy(model(**packed))[0]
    unpacked = np.concatenate([row[:n] for row, n in zip(padded_logits, lengths)])
    assert packed_logits.shape == unpacked.shape
    assert np.abs(packed_logits - unpacked).max() <= MODEL_SAME_BACKEND_ATOL


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "glm4v"])
def test_cached_decoding_continues_3d_positions(checkpoint, family):
    """Prefill a left-padded prompt batch with an image and a video, then decode 2 tokens one at a time: each
    step's logits equal the full forward over prompt + decoded tokens."""
    ckpt = checkpoint(family, False)
    model = ckpt.build()
    prompt = reference.build_inputs(ckpt.hf_dir, ("image_large", "video"), padding_side="left")
    new_tokens = np.array([[40, 41], [50, 51]])
    full = dict(model_inputs(prompt), input_ids=np.concatenate([prompt["input_ids"], new_tokens], 1),
                attention_mask=np.concatenate([prompt["attention_mask"], np.ones_like(new_tokens)], 1),
                mm_token_type_ids=np.concatenate([prompt["mm_token_type_ids"], np.zeros_like(new_tokens)], 1))
    cache = KVCache()
    with nn.inference_mode():
        expected = ops.to_numpy(model(**full))
        steps = [ops.to_numpy(model(**model_inputs(prompt), cache=cache))[:, -1]]
        mask = prompt["attention_mask"]
        for i in range(new_tokens.shape[1]):
            mask = np.concatenate([mask, np.ones((2, 1), mask.dtype)], 1)
            logits = model(new_tokens[:, i:i + 1], attention_mask=mask, cache=cache, logits_to_keep=1)
            assert logits.shape[1] == 1
            steps.append(ops.to_numpy(logits)[:, -1])
    length = prompt["input_ids"].shape[1]
    for i, logits in enumerate(steps):
        assert np.abs(logits - expected[:, length - 1 + i]).max() <= MODEL_SAME_BACKEND_ATOL
    assert cache.length == length + 2
