"""The guides' freeze flags select the same parameter groups in every family; Qwen3-VL's deepstack mergers count as
projector (merger) parameters, not as vision-encoder ones."""
import pytest

from mmx import models, nn
from mmx.tiny import make_tiny_checkpoint
from mmx.train.freeze import apply_freeze

FLAGS = {
    "vision_encoder": {"image_encoder": {"vision_encoder": {"freeze": True}}},
    "vision_projector": {"image_encoder": {"vision_projector": {"freeze": True}}},
    "text_decoder": {"text_decoder": {"freeze": True}},
    "lm_head": {"text_decoder": {"lm_head": {"freeze": True}}},
}


@pytest.fixture(scope="module")
def qwen3_vl_dir(tmp_path_factory):
    return make_tiny_checkpoint(str(tmp_path_factory.mktemp("qwen3_vl")), "qwen3_vl")


@pytest.mark.parametrize("flag", sorted(FLAGS))
def test_qwen3_vl_freeze_groups(qwen3_vl_dir, flag):
    model = models.build(qwen3_vl_dir)
    names = [name for name, _ in nn.named_parameters(model)]
    frozen = set(apply_freeze(model, FLAGS[flag]))
    deepstack = {name for name in names if ".deepstack_layer." in name}
    assert len(deepstack) == 2 * 6            # 2 mergers x (norm, fc1, fc2) x (weight, bias)
    want = {
        "vision_encoder": {n for n in names if n.startswith("image_encoder.encoder.")} - deepstack,
        "vision_projector": {n for n in names if n.startswith("image_encoder.projector.")} | deepstack,
        "text_decoder": {n for n in names if n.startswith("text_decoder.")
                         and not n.startswith("text_decoder.output_layer.")},
        "lm_head": {"text_decoder.output_layer.weight"},
    }[flag]
    assert frozen == want
    if flag == "vision_encoder":
        assert {"image_encoder.encoder.pos_embed.weight", "image_encoder.encoder.patch_embed.proj.bias"} <= frozen
    if flag == "text_decoder":
        assert "text_decoder.decoder.layers.1.self_attention.q_layernorm.weight" in frozen


@pytest.fixture(scope="module")
def glm4v_dir(tmp_path_factory):
    return make_tiny_checkpoint(str(tmp_path_factory.mktemp("glm4v")), "glm4v")


@pytest.mark.parametrize("flag", sorted(FLAGS))
def test_glm4v_freeze_groups(glm4v_dir, flag):
    """GLM-4.1V: the vision encoder group is image_encoder.encoder.* (patch embed, post-conv norm, position table,
    blocks, final norm, downsample, as MindSpeed-MM names them), the projector group the merger."""
    model = models.build(glm4v_dir)
    names = [name for name, _ in nn.named_parameters(model)]
    frozen = set(apply_freeze(model, FLAGS[flag]))
    want = {
        "vision_encoder": {n for n in names if n.startswith("image_encoder.encoder.")},
        "vision_projector": {n for n in names if n.startswith("image_encoder.projector.")},
        "text_decoder": {n for n in names if n.startswith("text_decoder.")
                         and not n.startswith("text_decoder.output_layer.")},
        "lm_head": {"text_decoder.output_layer.weight"},
    }[flag]
    assert frozen == want
    if flag == "vision_encoder":
        assert {"image_encoder.encoder.downsample.weight", "image_encoder.encoder.blocks.final_layernorm.weight",
                "image_encoder.encoder.embeddings.position_embedding.weight"} <= frozen
    if flag == "vision_projector":
        assert len(frozen) == 6          # proj, LayerNorm weight + bias, gate, up, down
    if flag == "text_decoder":
        assert "text_decoder.decoder.layers.1.post_mlp_layernorm.weight" in frozen



@pytest.fixture(scope="module")
def internvl_dir(tmp_path_factory):
    return make_tiny_checkpoint(str(tmp_path_factory.mktemp("internvl")), "internvl", tied=False)


@pytest.mark.parametrize("flag", sorted(FLAGS))
def test_internvl_freeze_groups(internvl_dir, flag):
    """InternVL3: the vision encoder group is InternViT (patch embed, CLS token, position table, blocks with their
    layer scales), the projector group the original ``mlp1`` (LayerNorm, linear_fc1, linear_fc2)."""
    model = models.build(internvl_dir)
    names = [name for name, _ in nn.named_parameters(model)]
    frozen = set(apply_freeze(model, FLAGS[flag]))
    want = {
        "vision_encoder": {n for n in names if n.startswith("image_encoder.encoder.")},
        "vision_projector": {n for n in names if n.startswith("image_encoder.projector.")},
        "text_decoder": {n for n in names if n.startswith("text_decoder.")
                         and not n.startswith("text_decoder.output_layer.")},
        "lm_head": {"text_decoder.output_layer.weight"},
    }[flag]
    assert frozen == want
    if flag == "vision_encoder":
        assert {"image_encoder.encoder.embeddings.class_embedding", "image_encoder.encoder.encoder.layers.1.ls2",
                "image_encoder.encoder.embeddings.position_embedding"} <= frozen
    if flag == "vision_projector":
        assert sorted(frozen) == [f"image_encoder.projector.{part}.{kind}" for part in
                                  ("linear_fc1", "linear_fc2", "norm") for kind in ("bias", "weight")]
