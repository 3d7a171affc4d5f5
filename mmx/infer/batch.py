"""Batch inference from an ``inference.json`` in the guides' format, results as JSONL.

The keys MindSpeed-MM users know::

    {"infer_data_type": "image" | "video" | "text",
     "file_path": "view.jpg"            (or a list: one request per file; absent for "text"),
     "prompts": "Describe the image."   (or a list: one request per prompt),
     "max_new_tokens": 64, "batch_size": 4, "output_path": "results.jsonl"   (optional, mmx additions)}

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
USED_KEYS = {"infer_data_type", "file_path", "prompts", "max_new_tokens", "batch_size", "output_path"}


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


def read_requests(config_path):
    """(requests, options): requests are dicts with ``infer_data_type``, ``file_path``, ``prompt``; options hold
    ``max_new_tokens``, ``batch_size``, ``output_path`` when the file sets them. A relative file path is used as is
    when it exists from the current directory, else it is taken relative to the config file's directory."""
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
    options = {key: config[key] for key in ("max_new_tokens", "batch_size", "output_path") if key in config}
    return requests, options


def _resolve(file_path, base):
    candidate = Path(file_path)
    if candidate.exists() or candidate.is_absolute():
        return str(candidate)
    return str(base / candidate)


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
