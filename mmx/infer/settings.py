"""Generation settings: the checkpoint's ``generation_config.json`` first, then the user's overrides.

transformers fills unset fields with fixed defaults (``GenerationConfig._get_default_generation_params``:
temperature 1.0, top_k 50, top_p 1.0, repetition_penalty 1.0); the same defaults apply here so that
``mmx infer`` and ``model.generate()`` on the same checkpoint decode the same way.
"""
import json
import os
import sys
from dataclasses import dataclass, field, replace

from mmx.infer.sampling import SamplingConfig

HF_SAMPLING_DEFAULTS = {"do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0}
# Fields of generation_config.json that change decoding but are not implemented here: warned about, not ignored
# silently.
UNSUPPORTED = {"num_beams": 1, "no_repeat_ngram_size": 0, "min_p": None, "typical_p": 1.0, "bad_words_ids": None,
               "suppress_tokens": None, "begin_suppress_tokens": None, "forced_eos_token_id": None,
               "num_return_sequences": 1, "length_penalty": 1.0}


@dataclass
class GenerationSettings:
    """Everything the decode loop needs besides the model and the inputs."""

    max_new_tokens: int = 64
    eos_token_ids: tuple = ()
    pad_token_id: int = 0
    stop_strings: tuple = ()
    use_cache: bool = True
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


def _as_tuple(value):
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def read_generation_config(model_dir):
    """The checkpoint's generation_config.json as a dict ({} when the file is absent)."""
    path = os.path.join(model_dir, "generation_config.json")
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as handle:
            return json.load(handle)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); fix or delete it") from err


def from_checkpoint(model_dir, tokenizer, **overrides):
    """Settings from ``model_dir``'s generation config and ``tokenizer``, then ``overrides``.

    Overrides: ``max_new_tokens``, ``use_cache``, ``stop_strings`` and the sampling fields (``do_sample``,
    ``temperature``, ``top_k``, ``top_p``, ``repetition_penalty``, ``seed``); ``None`` values are ignored.
    EOS ids are the generation config's ``eos_token_id`` (int or list), else the tokenizer's; the pad id is the
    generation config's, else the tokenizer's, else the first EOS id (transformers' fallback).
    """
    generation = read_generation_config(model_dir)
    for key, neutral in UNSUPPORTED.items():
        if generation.get(key) not in (None, neutral):
            print(f"mmx infer: {model_dir}/generation_config.json sets {key}={generation[key]!r}, which mmx infer "
                  f"does not implement; it is ignored", file=sys.stderr)
    eos = _as_tuple(generation.get("eos_token_id")) or _as_tuple(tokenizer.eos_token_id)
    pad = generation.get("pad_token_id")
    if pad is None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    sampling_values = {key: generation.get(key) for key in HF_SAMPLING_DEFAULTS}
    sampling_values = {key: HF_SAMPLING_DEFAULTS[key] if value is None else value
                       for key, value in sampling_values.items()}
    settings = GenerationSettings(max_new_tokens=generation.get("max_new_tokens") or 64, eos_token_ids=eos,
                                  pad_token_id=int(pad), stop_strings=_as_tuple(generation.get("stop_strings")),
                                  sampling=SamplingConfig(**sampling_values))
    return override(settings, **overrides)


def override(settings, **overrides):
    """A copy of ``settings`` with the non-None ``overrides`` applied (sampling fields go to ``settings.sampling``)."""
    overrides = {key: value for key, value in overrides.items() if value is not None}
    sampling_keys = set(SamplingConfig.__dataclass_fields__)
    sampling = {key: overrides.pop(key) for key in list(overrides) if key in sampling_keys}
    if "stop_strings" in overrides:
        overrides["stop_strings"] = _as_tuple(overrides["stop_strings"])
    unknown = set(overrides) - set(GenerationSettings.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown generation settings {sorted(unknown)}")
    return replace(settings, sampling=replace(settings.sampling, **sampling), **overrides)
