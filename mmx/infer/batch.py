"""Batch inference from an ``inference.json`` in the guides' format, results as JSONL.

The keys MindSpeed-MM users know::

    {"infer_data_type": "image" | "video" | "text",
     "file_path": "view.jpg"            (or a list: one request per file; absent for "text"),
     "prompts": "Describe the image."   (or a list: one request per prompt),
     "max_new_tokens": 64, "batch_size": 4, "output_path": "results.jsonl"   (optional, mmx additions)}

and mmx's own generation settings (:mod:`mmx.infer.settings`; optional, the command line's options win):
``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``repetition_penalty``, ``seed``, ``stop_strings``,
``use_cache``.

A list of prompts with a single file asks every prompt about that file; a list of files with a single prompt asks
the prompt about every file; two lists of the same length are paired. Other keys of the guides' files
(``model_id``, ``from_pretrained``, ``tokenizer``, ...) describe the model, which ``--model`` gives here: they are
reported on stderr and not used. Each result line: ``{"index", "infer_data_type", "file_path", "prompt", "text",
"token_ids", "finish_reason"}``.
"""
import json
import sys
from pathlib import Path

from mmx.infer.prompts import user_message

DATA_TYPES = ("image", "video", "text")
# mmx's generation settings a config may hold, with the types they take
GENERATION_KEYS = {"max_new_tokens": int, "do_sample": bool, "temperature": (int, float), "top_k": int,
                   "top_p": (int, float), "repetition_penalty": (int, float), "seed": int, "stop_strings": (str, list),
                   "use_cache": bool}
OPTION_KEYS = {"batch_size": int, "output_path": str, **GENERATION_KEYS}
USED_KEYS = {"infer_data_type", "file_path", "prompts", *OPTION_KEYS}


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


def read_requests(config_path):
    """(requests, options): requests are dicts with ``infer_data_type``, ``file_path``, ``prompt``; options hold
    ``batch_size``, ``output_path`` and the generation settings (``GENERATION_KEYS``) the file sets. A relative
    file path is relative to the config file's folder (the one rule of docs/data.md: relative to the file that
    names it)."""
    path = Path(config_path)
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"--config {config_path}: no such file") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"--config {config_path} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise ValueError(f"--config {config_path}: expected a JSON object with infer_data_type, file_path, prompts")
    data_type = config.get("infer_data_type", "text")
    if data_type not in DATA_TYPES:
        raise ValueError(f"{config_path}: infer_data_type {data_type!r} is not one of {', '.join(DATA_TYPES)}")
    if "prompts" not in config:
        raise ValueError(f"{config_path}: 'prompts' is missing (a string or a list of strings)")
    prompts = _as_list(config["prompts"])
    if not prompts or not all(isinstance(prompt, str) for prompt in prompts):
        raise ValueError(f"{config_path}: 'prompts' must be a non-empty string or list of strings")
    files = [None]
    if data_type != "text":
        if not config.get("file_path"):
            raise ValueError(f"{config_path}: infer_data_type is {data_type!r} but 'file_path' is missing")
        files = [_resolve(item, path.parent) for item in _as_list(config["file_path"])]
    if len(prompts) > 1 and len(files) > 1 and len(prompts) != len(files):
        raise ValueError(f"{config_path}: {len(prompts)} prompts and {len(files)} file paths: give one of them "
                         f"once, or both lists with the same length (paired in order)")
    count = max(len(prompts), len(files))
    requests = [{"infer_data_type": data_type, "file_path": files[i % len(files)], "prompt": prompts[i % len(prompts)]}
                for i in range(count)]
    ignored = sorted(set(config) - USED_KEYS)
    if ignored:
        print(f"mmx infer: {config_path}: keys {ignored} describe the model in the guides' scripts; mmx takes the "
              f"model from --model and ignores them", file=sys.stderr)
    options = {key: config[key] for key in OPTION_KEYS if key in config}
    for key, value in options.items():
        kinds = OPTION_KEYS[key] if isinstance(OPTION_KEYS[key], tuple) else (OPTION_KEYS[key],)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise ValueError(f"{config_path}: {key} {value!r} must be {' or '.join(k.__name__ for k in kinds)}")
    return requests, options


def _resolve(file_path, base):
    candidate = Path(file_path)
    return str(candidate if candidate.is_absolute() else base / candidate)


def conversation_of(request):
    """The one-turn conversation of a request."""
    media = {"image": "images", "video": "videos"}.get(request["infer_data_type"])
    extra = {media: [request["file_path"]]} if media else {}
    return [user_message(request["prompt"], **extra)]


def run(pipeline, requests, batch_size, out, **overrides):
    """Generate for ``requests`` ``batch_size`` at a time and write one JSON line per request to ``out``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(requests), batch_size):
        chunk = requests[start:start + batch_size]
        replies = pipeline.generate([conversation_of(request) for request in chunk], **overrides)
        for offset, (request, reply) in enumerate(zip(chunk, replies)):
            record = {"index": start + offset, **request, "text": reply.text, "token_ids": reply.token_ids,
                      "finish_reason": reply.finish_reason}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        out.flush()
