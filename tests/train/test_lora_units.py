"""LoRA pieces on both backends, in seconds: merging adapters that cover only parts of fused Linears (q and v of
``linear_qkv``, up of ``linear_fc1``, the vision ``qkv``) gives the LoRA model's logits; PEFT's target matching;
one-line errors for wrong ``training.lora`` settings."""
import numpy as np
import pytest

from mmx import lora, nn, ops
from mmx.train.config import ConfigError, load_config

MERGE_ATOL = 1e-5


@pytest.fixture(scope="module")
def glm4v_dir(tmp_path_factory):
    from mmx.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(str(tmp_path_factory.mktemp("glm4v")), family="glm4v")


def _lora_model(path, spec):
    from mmx.train.finetune import build_model

    model, metadata, _ = build_model({"init_from_hf_path": path, "image_encoder": {}, "text_decoder": {}})
    plan = lora.apply_lora(model, lora.lora_config(spec), metadata, seed=1)
    return model, metadata, plan


def test_merging_partial_fused_adapters_equals_the_lora_model(glm4v_dir):
    from mmx.train.finetune import build_model

    model, metadata, plan = _lora_model(glm4v_dir, {"rank": 4, "alpha": 8,
                                                    "target_modules": ["q_proj", "v_proj", "up_proj"]})
    fused = "text_decoder.decoder.layers.0.self_attention.linear_qkv"
    assert [hf.rsplit(".", 1)[1] for hf in plan["targets"][fused]] == ["q_proj", "v_proj"]
    rng = np.random.RandomState(0)
    state = {name: ops.to_numpy(value) for name, value in nn.state_dict(model).items()}
    adapters = {name: (0.1 * rng.randn(*state[name].shape)).astype(np.float32) for name in lora.adapter_names(model)}
    nn.load_state_dict(model, {name: ops.tensor(value) for name, value in {**state, **adapters}.items()})
    ids = ops.tensor(np.array([[15, 9, 13, 7, 22, 30, 40, 11]]))
    with_lora = ops.to_numpy(model(input_ids=ids))
    base = {name: value for name, value in state.items() if ".lora." not in name}
    merged = lora.merged_tensors(dict(metadata, lora={"plan": plan}), base, adapters)
    plain, _, _ = build_model({"init_from_hf_path": glm4v_dir, "image_encoder": {}, "text_decoder": {}})
    nn.load_state_dict(plain, {name: ops.tensor(value) for name, value in merged.items()})
    without = ops.to_numpy(plain(input_ids=ids))
    assert np.abs(with_lora - without).max() <= MERGE_ATOL
    changed = [name for name in merged if not np.array_equal(merged[name], base[name])]
    assert sorted(changed) == sorted(f"{module}.weight" for module in plan["targets"])
    # the k rows of linear_qkv and the gate rows of linear_fc1 carry no adapter: bit-identical to the base
    hf, transform = lora.family_rows(metadata)[fused + ".weight"]
    sizes = [shape[0] for shape in transform.hf_shapes(base[fused + ".weight"].shape)]
    rows = lora.piece_rows(transform, sizes, [True, False, True])
    k_rows = np.flatnonzero(rows == rows.max())   # the zero column: rows without an adapter
    assert len(k_rows) == sizes[1] and np.array_equal(merged[fused + ".weight"][k_rows], base[fused + ".weight"][k_rows])


def test_all_linear_skips_the_output_layer_and_frozen_modules(glm4v_dir):
    from mmx.train.finetune import build_model

    model, metadata, _ = build_model({"init_from_hf_path": glm4v_dir,
                                      "image_encoder": {"vision_encoder": {"freeze": True}}, "text_decoder": {}})
    plan = lora.apply_lora(model, lora.lora_config({"target_modules": "all-linear"}), metadata)
    assert lora.OUTPUT_LAYER not in plan["targets"]
    assert not [m for m in plan["targets"] if m.startswith("image_encoder.encoder.")]   # frozen: no adapters
    assert any(m.startswith("image_encoder.projector.") for m in plan["targets"])
    trainable = [name for name, param in nn.named_parameters(model) if param.requires_grad]
    assert trainable and all(".lora." in name for name in trainable)


@pytest.mark.parametrize("spec,message", [
    ({"rnak": 8}, "unknown key training.lora.rnak (did you mean 'rank'?)"),
    ({"dropout": 1.5}, "training.lora.dropout 1.5: use a probability in [0, 1)"),
    ({"rank": 0}, "training.lora.rank 0: use a positive integer"),
    ({"target_modules": []}, "training.lora.target_modules []: use all-linear"),
])
def test_wrong_lora_settings_are_one_line_errors(spec, message):
    with pytest.raises(ConfigError) as err:
        load_config(base={"model": {"init_from_hf_path": "x"}, "training": {"lora": spec}})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_lora_with_fully_shard_is_refused():
    with pytest.raises(ConfigError, match="training.lora with training.data_parallel: fully_shard is not supported"):
        load_config(base={"model": {"init_from_hf_path": "x"},
                          "training": {"lora": {"rank": 4}, "data_parallel": "fully_shard"}})


def test_targets_naming_nothing_and_split_modules_to_save_are_refused(glm4v_dir):
    with pytest.raises(ConfigError, match="matches no Linear of this model"):
        _lora_model(glm4v_dir, {"target_modules": ["c_attn"]})
    with pytest.raises(ConfigError, match="fuses .*q_proj.*k_proj.*v_proj.* which train together"):
        _lora_model(glm4v_dir, {"target_modules": ["o_proj"], "modules_to_save": ["q_proj"]})


@pytest.mark.backend("torch")
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl", "qwen3_vl_moe"])
def test_all_linear_on_the_other_families_equals_peft(tmp_path, family):
    """The families the training parity does not run: ``all-linear`` puts adapters on exactly the modules peft's
    all-linear does (Qwen3-VL-MoE: not the routers, which transformers does not make nn.Linear), and with random
    adapters copied over the logits agree (text prompt, fp32)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from mmx.tiny import make_tiny_checkpoint

    path = make_tiny_checkpoint(str(tmp_path / family), family=family)
    model, metadata, plan = _lora_model(path, {"rank": 4, "alpha": 8, "target_modules": "all-linear"})
    rng = np.random.RandomState(0)
    state = {name: ops.to_numpy(value) for name, value in nn.state_dict(model).items()}
    adapters = {name: (0.1 * rng.randn(*state[name].shape)).astype(np.float32) for name in lora.adapter_names(model)}
    nn.load_state_dict(model, {name: ops.tensor(value) for name, value in {**state, **adapters}.items()})
    reference = get_peft_model(AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32),
                               LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    theirs = sorted(name[len(lora.PEFT_PREFIX):] for name, module in reference.named_modules()
                    if hasattr(module, "lora_A") and hasattr(module, "base_layer"))
    assert sorted(lora.peft_config(plan, metadata, path)["target_modules"]) == theirs
    weights = reference.state_dict()
    with torch.no_grad():
        for key, value in lora.peft_state(adapters, plan, metadata).items():
            weights[key.replace(".weight", ".default.weight")].copy_(torch.from_numpy(value))
    ids = np.array([[15, 9, 13, 7, 22, 30, 40, 11]])
    with torch.no_grad():
        expected = reference(input_ids=torch.from_numpy(ids)).logits.numpy()
    assert np.abs(ops.to_numpy(model(input_ids=ops.tensor(ids))) - expected).max() <= 1e-4


def test_dropout_is_off_at_inference_and_inside_dropout_disabled(glm4v_dir):
    model, _, _ = _lora_model(glm4v_dir, {"rank": 4, "alpha": 8, "target_modules": ["q_proj"], "dropout": 0.5})
    state = {name: ops.to_numpy(value) for name, value in nn.state_dict(model).items()}
    rng = np.random.RandomState(0)
    nn.load_state_dict(model, {name: ops.tensor(value if ".lora." not in name else rng.randn(*value.shape))
                               for name, value in state.items()})
    ids = ops.tensor(np.array([[15, 9, 13, 7, 22, 30, 40, 11]]))
    inference = ops.to_numpy(model(input_ids=ids))          # apply_lora without dropout=True: off
    assert np.array_equal(inference, ops.to_numpy(model(input_ids=ids)))
    from mmx.nn.lora import set_dropout

    for linear in lora.lora_modules(model).values():
        set_dropout(linear, True)
    assert not np.array_equal(ops.to_numpy(model(input_ids=ids)), inference)
    with lora.dropout_disabled(model):
        assert np.array_equal(ops.to_numpy(model(input_ids=ids)), inference)
    assert not np.array_equal(ops.to_numpy(model(input_ids=ids)), inference)   # back on after
