"""Greedy generation equals transformers' ``generate`` token for token (float32), with and without the KV cache;
a left-padded batch equals its rows run alone; stop strings; seeded sampling."""
import pytest

from mmx.infer.prompts import encode

from infer_helpers import KINDS, MAX_NEW_TOKENS, SAMPLING, Reference, conversation

FAMILIES = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl", "qwen3_vl_moe", "glm4v", "glm4v_moe", "internvl")
_runs = {}


def single_run(pipeline, family, kind, media, use_cache):
    """mmx's greedy tokens for one conversation, memoised (the batch test reuses them)."""
    key = (family, kind, use_cache)
    if key not in _runs:
        reply = pipeline(family).generate([conversation(kind, media)], max_new_tokens=MAX_NEW_TOKENS,
                                          do_sample=False, use_cache=use_cache)[0]
        _runs[key] = reply.token_ids
    return _runs[key]


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no_cache"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_equals_transformers(pipeline, reference, media, family, kind, use_cache):
    want = reference(family).greedy([conversation(kind, media)])[0]
    got = single_run(pipeline, family, kind, media, use_cache)
    assert got == want, f"{family} {kind} cache={use_cache}: mmx {got} != transformers {want}"


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_of_three_equals_single_runs(pipeline, reference, media, family):
    kinds = ("text", "image", "two_images")          # prompts of three different lengths → left padding
    conversations = [conversation(kind, media) for kind in kinds]
    lengths = encode(pipeline(family).processor, conversations)["attention_mask"].sum(axis=1).tolist()
    assert len(set(lengths)) == 3, lengths
    replies = pipeline(family).generate(conversations, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    singles = [single_run(pipeline, family, kind, media, True) for kind in kinds]
    assert [reply.token_ids for reply in replies] == singles, f"prompt lengths {lengths}"
    assert reference(family).greedy(conversations) == singles     # transformers' own batch agrees too


def test_decode_continues_positions_after_images(pipeline, media):
    """The cache's next 3-D position is max(prompt positions) + 1, not the token count (images take fewer
    positions than tokens); a decode step must use it — the no-cache rerun recomputes positions from scratch."""
    from mmx.models.common.cache import KVCache

    pipe = pipeline("qwen2_5_vl")
    inputs = encode(pipe.processor, [conversation("two_images", media)])
    cache = KVCache()
    pipe.model(inputs["input_ids"], attention_mask=inputs["attention_mask"], pixel_values=inputs["pixel_values"],
               image_grid_thw=inputs["image_grid_thw"], cache=cache)
    tokens = inputs["input_ids"].shape[1]
    assert cache.length == tokens
    assert 0 < int(cache.next_position[0]) < tokens      # vision tokens share positions


def test_decode_step_treats_generated_placeholders_as_tokens(pipeline, media):
    """A model may generate <|image_pad|>; in a cached decode step no pixels belong to it, so it is embedded as a
    plain token (transformers does the same) instead of failing the feature count check. Only the last position's
    logits are computed (``logits_to_keep=1``) and they match the last row of the full logits."""
    import numpy as np

    from mmx import ops
    from tolerances import MODEL_SAME_BACKEND_ATOL
    from mmx.models.common.cache import KVCache

    pipe = pipeline("qwen2_5_vl")
    inputs = encode(pipe.processor, [conversation("image", media)])
    vision = {"pixel_values": inputs["pixel_values"], "image_grid_thw": inputs["image_grid_thw"]}
    cache = KVCache()
    full = pipe.model(inputs["input_ids"], attention_mask=inputs["attention_mask"], cache=cache, **vision)
    last = pipe.model(inputs["input_ids"], attention_mask=inputs["attention_mask"], logits_to_keep=1, **vision)
    assert tuple(last.shape) == (1, 1, full.shape[2])
    # Same numbers up to the matmul's blocking (a 1-row product rounds differently from a many-row one).
    assert np.abs(ops.to_numpy(last)[:, 0] - ops.to_numpy(full)[:, -1]).max() <= MODEL_SAME_BACKEND_ATOL
    placeholder = np.array([[pipe.model.config.image_token_id]])
    mask = np.ones((1, inputs["input_ids"].shape[1] + 1), np.int64)
    step = ops.to_numpy(pipe.model(placeholder, attention_mask=mask, cache=cache, logits_to_keep=1))
    assert step.shape == (1, 1, full.shape[2]) and np.isfinite(step).all()


def test_stop_string_ends_the_row(pipeline, media):
    pipe = pipeline("qwen2_5_vl")
    full = single_run(pipeline, "qwen2_5_vl", "text", media, True)
    tokenizer = pipe.processor.tokenizer
    # The first generated token whose text is new and non-empty becomes the stop string.
    for index in range(1, len(full)):
        piece = tokenizer.decode(full[index:index + 1])
        if piece.strip() and piece not in tokenizer.decode(full[:index]):
            break
    else:
        pytest.fail(f"no usable stop string in {full}")
    reply = pipe.generate([conversation("text", media)], max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                          stop_strings=[piece])[0]
    assert reply.token_ids == full[:index + 1]
    assert reply.finish_reason == "stop_string"


def test_max_new_tokens_and_eos_reasons(pipeline, reference, media):
    pipe = pipeline("qwen2_5_vl")
    eos = reference("qwen2_5_vl").eos
    for kind in KINDS:
        tokens = single_run(pipeline, "qwen2_5_vl", kind, media, True)
        ends_in_eos = tokens[-1] in eos
        assert len(tokens) == MAX_NEW_TOKENS or ends_in_eos
    reply = pipe.generate([conversation("text", media)], max_new_tokens=2, do_sample=False)[0]
    assert len(reply.token_ids) <= 2 and reply.finish_reason in ("length", "eos")


def test_seeded_sampling_is_reproducible(pipeline, media):
    pipe = pipeline("qwen2_vl")
    request = [conversation("image", media)]
    sample = dict(SAMPLING, max_new_tokens=MAX_NEW_TOKENS)
    first = pipe.generate(request, seed=7, **sample)[0].token_ids
    again = pipe.generate(request, seed=7, **sample)[0].token_ids
    other = pipe.generate(request, seed=8, **sample)[0].token_ids
    assert first == again
    assert first != other, "two seeds drew the same 4 tokens at temperature 3 over a 320-token vocabulary"
    greedy = single_run(pipeline, "qwen2_vl", "image", media, True)
    assert pipe.generate(request, seed=7, **dict(sample, top_k=1))[0].token_ids == greedy


@pytest.mark.backend("torch")
def test_seeded_sampling_is_the_same_on_mindspore(pipeline, hf_dir, media):
    """Draws happen on the host (numpy), so a seed picks the same tokens on both backends."""
    import json
    import os
    import subprocess
    import sys

    runner = os.path.join(os.path.dirname(__file__), "infer_sample_runner.py")
    done = subprocess.run([sys.executable, runner, hf_dir("qwen2_vl"), media["a"], "11"], capture_output=True,
                          text=True, env=dict(os.environ, MMX_BACKEND="mindspore"))
    assert done.returncode == 0, done.stderr[-3000:]
    on_mindspore = json.loads(done.stdout.strip().splitlines()[-1])
    request = [conversation("image", media)]
    on_torch = pipeline("qwen2_vl").generate(request, seed=11, max_new_tokens=MAX_NEW_TOKENS, **SAMPLING)[0]
    assert on_torch.token_ids == on_mindspore


class _OriginalLayoutReference(Reference):
    """transformers' greedy generate on an original-layout InternVL checkpoint (OpenGVLab's vision_model.* /
    mlp1.* names), loaded renamed by mmx.reference (transformers cannot run the remote code)."""

    def __init__(self, model_dir):
        import torch
        from transformers import AutoProcessor, GenerationConfig

        from mmx import reference

        self.torch, self.processor = torch, AutoProcessor.from_pretrained(model_dir)
        self.model = reference._hf_model(model_dir)
        self.model.generation_config = GenerationConfig.from_pretrained(model_dir)
        self.eos = self.model.generation_config.eos_token_id
        self._memo = {}


def test_internvl_6b_tower_original_layout_greedy_equals_transformers(tmp_path_factory, media):
    """The other InternVL variant: the 6B-style tower (RMSNorm, qk-norm, a resampled position table) with its
    weights in the original layout, image (3 tiles), video (frames as tiles) and text, with the KV cache."""
    from mmx import infer
    from mmx.tiny import make_tiny_checkpoint

    hf_dir = make_tiny_checkpoint(str(tmp_path_factory.mktemp("internvl_6b_original")), "internvl",
                                  vision_variant="6b", hf_layout="original")
    pipeline, want = infer.load(hf_dir), _OriginalLayoutReference(hf_dir)
    for kind in ("image", "video", "text"):
        conversations = [conversation(kind, media)]
        got = pipeline.generate(conversations, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)[0].token_ids
        assert got == want.greedy(conversations)[0] and len(got) == MAX_NEW_TOKENS, kind
