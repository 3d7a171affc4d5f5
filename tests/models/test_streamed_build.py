"""``models.build_streamed``: a model built without weight storage (nn.empty_init) and filled tensor by tensor
from the mm shards gives the same logits, bit for bit, as the model built with zeros and loaded whole; a stage
keeps only its tensors; a checkpoint missing a tensor is refused naming it."""

import numpy as np
import pytest

from mmx import models, nn, ops, reference
from mmx.parallel import Stage

from model_helpers import model_inputs


def test_streamed_build_equals_the_whole_load(checkpoint):
    ckpt = checkpoint("glm4v_moe", False)
    inputs = reference.build_inputs(ckpt.hf_dir, ("image_small", "text"))
    streamed = models.build_streamed(ckpt.hf_dir, ckpt.mm_dir)
    with nn.inference_mode():
        want = ops.to_numpy(ckpt.build()(**model_inputs(inputs)))
        got = ops.to_numpy(streamed(**model_inputs(inputs)))
    np.testing.assert_array_equal(got, want)
    params = dict(nn.named_parameters(streamed))
    bias = params["text_decoder.decoder.layers.1.mlp.router.e_score_correction_bias"]
    assert bias.dtype == ops.float32 and not bias.requires_grad             # frozen fp32, as built


def test_streamed_build_of_a_stage_holds_its_layers_only(checkpoint):
    ckpt = checkpoint("glm4v_moe", False)
    stage = Stage(vision_layers=(), llm_layers=(1, 2), first=False, last=True)
    model = models.build_streamed(ckpt.hf_dir, ckpt.mm_dir, stage)
    names = [name for name, _ in nn.named_parameters(model)]
    assert names and all(name.startswith(("text_decoder.decoder.layers.1.", "text_decoder.decoder.layers.2.",
                                          "text_decoder.decoder.final_layernorm", "text_decoder.output_layer"))
                         for name in names)
    np.testing.assert_array_equal(ops.to_numpy(dict(nn.named_parameters(model))[names[0]]), ckpt.tensors[names[0]])


def test_a_missing_tensor_is_named(checkpoint, tmp_path):
    from mmx.checkpoint.store import MMSource
    from mmx.models.common.weights import stream_mm_state

    ckpt = checkpoint("glm4v_moe", False)
    source = MMSource(ckpt.mm_dir, streaming=True)
    gone = "text_decoder.decoder.layers.2.mlp.experts.linear_fc2.weight"
    source.entries = {name: entry for name, entry in source.entries.items() if name != gone}
    with nn.empty_init():
        model = models.build(ckpt.hf_dir)
    with pytest.raises(ValueError, match=r"no tensor for 1 parameters .*layers\.2\.mlp\.experts\.linear_fc2"):
        stream_mm_state(model, source)
