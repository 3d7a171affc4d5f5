"""LoRA adapters at inference, on both backends: a PEFT adapter (random A and B, peft's init_lora_weights=False,
on every Linear incl. the vision tower's fused qkv, + lm_head as modules_to_save) given to ``mmx infer --adapter``
generates greedily the same tokens as transformers + peft; the same adapter imported with
``training.lora.init_from`` starts training from peft's loss."""
import os

import numpy as np
import pytest
from click.testing import CliRunner

from infer_helpers import MAX_NEW_TOKENS, conversation, until_eos

FAMILY = "qwen2_5_vl"
BACKEND = os.environ.get("MMX_BACKEND", "torch")


@pytest.fixture(scope="module")
def peft_adapter(hf_dir, tmp_path_factory):
    """(adapter directory, the transformers + peft model it was saved from)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(0)
    base = AutoModelForImageTextToText.from_pretrained(hf_dir(FAMILY), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                            modules_to_save=["lm_head"], init_lora_weights=False))
    with torch.no_grad():   # a trained-looking head copy: not the base's
        model.base_model.model.lm_head.modules_to_save["default"].weight.mul_(1.5)
    directory = str(tmp_path_factory.mktemp("peft"))
    model.save_pretrained(directory)
    return directory, model.eval()


def _peft_greedy(model, hf, conversations):
    import torch
    from transformers import AutoProcessor

    from mmx.infer.prompts import encode

    processor = AutoProcessor.from_pretrained(hf)
    inputs = {name: torch.tensor(value) for name, value in encode(processor, conversations).items()}
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    eos = model.base_model.model.generation_config.eos_token_id
    return [until_eos(row, eos) for row in out[:, inputs["input_ids"].shape[1]:].tolist()], processor


@pytest.mark.parametrize("kind", ["image", "text"])
def test_infer_with_a_peft_adapter_equals_transformers_peft_greedy(hf_dir, media, peft_adapter, kind):
    from mmx import infer

    directory, model = peft_adapter
    conversations = [conversation(kind, media)]
    expected, processor = _peft_greedy(model, hf_dir(FAMILY), conversations)
    pipeline = infer.load(hf_dir(FAMILY), adapter=directory)
    got = [reply.token_ids for reply in pipeline.generate(conversations, do_sample=False,
                                                          max_new_tokens=MAX_NEW_TOKENS)]
    assert [list(map(int, row)) for row in got] == expected
    plain = [r.token_ids for r in infer.load(hf_dir(FAMILY)).generate(conversations, do_sample=False,
                                                                        max_new_tokens=MAX_NEW_TOKENS)]
    assert plain != got     # the adapter changes what is generated
    if kind == "image":     # the CLI prints the same text
        from mmx.cli import main

        result = CliRunner().invoke(main, ["infer", "--backend", BACKEND, "--model", hf_dir(FAMILY), "--adapter", directory, "--greedy",
                                           "--max-new-tokens", str(MAX_NEW_TOKENS), "--image", media["a"],
                                           "--prompt", "Describe the image."])
        assert result.exit_code == 0, result.output
        assert result.stdout == processor.tokenizer.decode(expected[0], skip_special_tokens=True) + "\n"


def test_peft_adapter_continues_training_from_its_loss(hf_dir, peft_adapter, tmp_path):
    """``training.lora.init_from: PEFT_DIR``: the adapters (and lm_head copy) are imported, so the first step's loss
    is transformers + peft's loss on the same batch."""
    import torch

    from mmx.data.digits import make_digits_vqa
    from mmx.train.config import load_config
    from mmx.train.finetune import build_data, build_model
    from mmx.train.loop import Sampler, Trainer

    directory, model = peft_adapter
    digits = make_digits_vqa(str(tmp_path / "digits"), size=56, max_samples=4)
    config = load_config(base={"model": {"init_from_hf_path": hf_dir(FAMILY)},
                               "data": {"dataset": digits["train"], "dataset_dir": digits["dataset_dir"]},
                               "training": {"train_iters": 1, "micro_batch_size": 2, "global_batch_size": 2,
                                            "loss_type": "per_token", "progress_bar": False, "peak_tflops": 1.0,
                                            "log_dir": str(tmp_path / "logs"), "lora": {"init_from": directory}}})
    mmx_model, metadata, _ = build_model(config["model"])
    pipeline = build_data(config)
    trainer = Trainer(mmx_model, pipeline.dataset, pipeline.collate, config["training"], metadata)
    assert trainer.lora["plan"]["modules_to_save"] == ["text_decoder.output_layer.weight"]
    batch = pipeline.collate([pipeline.dataset[i] for i in Sampler(len(pipeline.dataset),
                                                                   config["training"]["seed"]).indices(0, 2)])
    ours = trainer.run()[0]["loss"]
    inputs = {key: torch.from_numpy(np.ascontiguousarray(batch[key])) for key in
              ("input_ids", "attention_mask", "labels", "pixel_values", "image_grid_thw")}
    image_token = model.base_model.model.config.image_token_id
    inputs["mm_token_type_ids"] = torch.from_numpy(np.where(batch["input_ids"] == image_token, 1, 0))
    with torch.no_grad():
        theirs = float(model(**inputs).loss)
    assert abs(ours - theirs) <= 1e-5 * abs(theirs), (ours, theirs)
