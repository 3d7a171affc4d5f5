"""Loading a model for inference from an mm checkpoint (any TP/PP layout) or a Hugging Face checkpoint.

An mm directory (``latest_checkpointed_iteration.txt`` at its root) is read with ``mmx.checkpoint.load_mm``, which
merges the TP/PP pieces into whole tensors. An HF directory (``config.json`` + safetensors) is converted to mm
tensors in memory (``mmx.convert.drivers.read_hf_as_mm``), the same path as
``mmx convert hf_to_mm`` without writing files. Either way the directory also holds the processor, tokenizer, chat
template and generation config (``mmx convert`` copies them into mm directories).
"""
from pathlib import Path

MM_MARKER = "latest_checkpointed_iteration.txt"


def checkpoint_kind(model_dir, iteration=None):
    """``"mm"`` or ``"hf"``; a ValueError naming what is missing otherwise (or an ``iteration`` an HF one lacks)."""
    path = Path(model_dir)
    if not path.is_dir():
        raise ValueError(f"--model {model_dir}: no such directory")
    if (path / MM_MARKER).exists():
        return "mm"
    if (path / "config.json").exists():
        if iteration is not None:
            raise ValueError(f"--iteration {iteration}: {model_dir} is an HF checkpoint, which holds one set of "
                             f"weights; --iteration picks an iteration of an mm checkpoint (a training save)")
        return "hf"
    raise ValueError(f"--model {model_dir}: neither an mm checkpoint ({MM_MARKER}) nor an HF checkpoint "
                     f"(config.json); pass the directory `mmx convert` or `save_pretrained` wrote")


def read_tensors(model_dir, iteration=None):
    """{mm name: numpy array} of the checkpoint in ``model_dir`` (mm: the latest iteration or ``iteration``; HF)."""
    if checkpoint_kind(model_dir, iteration) == "mm":
        from mmx.checkpoint import load_mm

        _, tensors = load_mm(model_dir, iteration=iteration)
        return tensors
    from mmx.convert.drivers import read_hf_as_mm

    return read_hf_as_mm(model_dir)[1]


def load_model(model_dir, iteration=None):
    """The model of ``model_dir`` on the current backend with its weights loaded (float32 parameters)."""
    from mmx import models

    if not (Path(model_dir) / "config.json").exists():
        raise ValueError(f"--model {model_dir}: config.json is missing; an mm checkpoint made by `mmx convert "
                         f"hf_to_mm` carries the HF config, tokenizer and processor files at its root")
    if checkpoint_kind(model_dir, iteration) == "mm":     # no second copy of the weights: streamed in
        return models.build_streamed(str(model_dir), model_dir, iteration=iteration)
    model = models.build(str(model_dir))
    models.load_mm_state(model, read_tensors(model_dir, iteration))
    return model


def load_processor(model_dir):
    """The checkpoint's own processor (image/video processors, tokenizer, chat template)."""
    from transformers import AutoProcessor

    from mmx.models import foreign_config_error
    from mmx.models.common.config import read_hf_config

    config = Path(model_dir) / "config.json"
    foreign = config.exists() and foreign_config_error(read_hf_config(str(config)).get("model_type"), str(config))
    if foreign:
        raise ValueError(foreign)

    try:
        return AutoProcessor.from_pretrained(str(model_dir))
    except (OSError, ValueError) as err:
        raise ValueError(f"--model {model_dir}: cannot load its processor/tokenizer ({err}); an HF checkpoint "
                         f"needs tokenizer.json, preprocessor_config.json and a chat template, and an mm checkpoint "
                         f"gets them from `mmx convert hf_to_mm` — copy them from the HF checkpoint") from err
