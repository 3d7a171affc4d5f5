"""A model built for a pipeline stage holds exactly that stage's parameters: the names the checkpoint layer gives
the stage (mmx.checkpoint.store.load_mm(mm_dir, stage)), and the stages together cover the full model."""
import pytest

from mmx import models, nn
from mmx.checkpoint.store import load_mm
from mmx.parallel import Stage

STAGES = [Stage((0, 1), (), True, False), Stage((), (0,), False, False), Stage((), (1,), False, True)]


@pytest.mark.parametrize("family,tied", [("qwen2_vl", True), ("qwen2_5_vl", False)])
def test_stage_models_hold_their_checkpoint_names(checkpoint, family, tied):
    ckpt = checkpoint(family, tied)
    full = {name for name, _ in nn.named_parameters(models.build(ckpt.hf_dir))}
    depth = models.config_from_hf(ckpt.hf_dir).vision.depth
    stages = [Stage(tuple(range(depth)), (), True, False)] + STAGES[1:]
    held = []
    for stage in stages:
        names = {name for name, _ in nn.named_parameters(models.build(ckpt.hf_dir, stage))}
        assert names == set(load_mm(ckpt.mm_dir, stage)[1])
        held.append(names)
    union = set().union(*held)
    # a tied last stage without the embedding holds a copy of it as output_layer
    assert union - full == ({"text_decoder.output_layer.weight"} if tied else set())
    assert full <= union
    assert all(name.startswith("image_encoder.") or name.startswith("text_decoder.embedding") for name in held[0])
    with pytest.raises(ValueError, match="pipeline stage"):
        models.build(ckpt.hf_dir, stages[1])(input_ids=[[1, 2]])
