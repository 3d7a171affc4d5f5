"""Dataset files → samples in one internal form.

Two record styles are read, told apart per record (or fixed by an ``attr`` section as in the guides' data.json):

* the mllm conversation format (MindSpeed-MM / LLaVA)::

    {"id": "0", "image": "coco/1.jpg" | "images": [...], "video": ... | "videos": [...],
     "conversations": [{"from": "human", "value": "<image>\\nWhat is this?"}, {"from": "gpt", "value": "A cat."}]}

  text-only samples simply have no image/video key;
* the messages style: ``{"messages": [{"role": "user", "content": "<image>Hi"}, ...], "images": [...]}``
  (``content`` may also be a list of ``{"type": "image"}`` / ``{"type": "text", "text": ...}`` parts).

Each image / video is referred to by one ``<image>`` / ``<video>`` placeholder in the text, in order; the counts must
match. Relative media paths are resolved against ``dataset_dir`` (the guides' meaning), or the dataset file's folder
when ``dataset_dir`` is not set. A video is a file (mp4, ...) or a folder of frame images.

A sample (plain dict, picklable and JSON-ready)::

    {"id": str, "file": dataset file, "line": int | None, "index": record index in the file,
     "messages": [{"role": "system" | "user" | "assistant", "content": str with <image>/<video>}],
     "images": [absolute path], "videos": [absolute path]}

Files are ``.json`` (one array of records) or ``.jsonl`` (one record per line; malformed lines are reported with
their line number).
"""
import json
import os
import re

from mmx.data.errors import (BAD_RECORD, MALFORMED_JSON, MISSING_MEDIA, PLACEHOLDER_MISMATCH, DataError)

IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"

# attr sections of the two built-in styles (keys as in LLaMA-Factory / MindSpeed-MM dataset attr sections).
MLLM_ATTR = {"messages": "conversations", "role_tag": "from", "content_tag": "value", "user_tag": "human",
             "assistant_tag": "gpt", "system_tag": "system", "images": None, "videos": None, "system": "system"}
MESSAGES_ATTR = {"messages": "messages", "role_tag": "role", "content_tag": "content", "user_tag": "user",
                 "assistant_tag": "assistant", "system_tag": "system", "images": None, "videos": None,
                 "system": "system"}
ATTR_KEYS = tuple(MLLM_ATTR)
# With no explicit attr, both spellings of the media keys and of the roles are accepted (Qwen-VL data uses
# "from": "user"/"assistant" inside "conversations").
_IMAGE_KEYS = ("images", "image")
_VIDEO_KEYS = ("videos", "video")
ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def check_attr(attr, where):
    """Validate a user ``attr`` section: known keys only (``where`` names the config for the message)."""
    if attr is None:
        return None
    if not isinstance(attr, dict):
        raise ValueError(f"{where}: attr must be a mapping like {MLLM_ATTR}, got {type(attr).__name__}")
    unknown = sorted(set(attr) - set(ATTR_KEYS) - {"formatting"})
    if unknown:
        raise ValueError(f"{where}: unknown attr key(s) {unknown}; known keys: {', '.join(ATTR_KEYS)}")
    base = MESSAGES_ATTR if attr.get("messages", "conversations") == "messages" else MLLM_ATTR
    return {**base, **{k: v for k, v in attr.items() if k != "formatting"}}


# ----------------------------------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------------------------------

def iter_jsonl_lines(path, offset=0, line=0):
    """(byte offset, 1-based line number, raw line) of each non-blank line of ``path`` from byte ``offset``.

    ``line`` is the number of lines before ``offset`` (for messages). Streaming resumes from a saved offset.
    """
    with open(path, "rb") as f:
        f.seek(offset)
        while True:
            start = f.tell()
            raw = f.readline()
            if not raw:
                return
            line += 1
            if raw.strip():
                yield start, line, raw


def parse_jsonl_line(path, line, raw):
    """The JSON object on one line, or a :class:`DataError` naming the line."""
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(MALFORMED_JSON, path, None, f"malformed JSON ({err}); fix or remove this line",
                        line=line) from None


def iter_records(path):
    """(index, line, record) of every record in a ``.json`` / ``.jsonl`` file; a malformed line is yielded as a
    DataError in place of its record so the caller decides to raise or skip."""
    if not os.path.isfile(path):
        raise DataError(BAD_RECORD, path, None, "dataset file not found; check dataset / dataset_dir in the config")
    if path.endswith(".jsonl"):
        for index, (_, line, raw) in enumerate(iter_jsonl_lines(path)):
            try:
                yield index, line, parse_jsonl_line(path, line, raw)
            except DataError as err:
                yield index, line, err
        return
    with open(path, "rb") as f:
        text = f.read()
    try:
        records = json.loads(text)
    except UnicodeDecodeError as err:
        raise DataError(MALFORMED_JSON, path, None, f"not UTF-8 text ({err.reason} at byte {err.start}); save the "
                        f"file as UTF-8, e.g. iconv -f latin1 -t utf-8") from None
    except json.JSONDecodeError as err:
        raise DataError(MALFORMED_JSON, path, None, f"malformed JSON: {err.msg} (column {err.colno}); the file must "
                        f"be one JSON array of samples, or use .jsonl with one sample per line",
                        line=err.lineno) from None
    if not isinstance(records, list):
        raise DataError(BAD_RECORD, path, None, f"a .json dataset must be a JSON array of samples, got "
                        f"{type(records).__name__}; use .jsonl for one sample per line")
    for index, record in enumerate(records):
        yield index, None, record


# ----------------------------------------------------------------------------------------------------------------
# Records → samples
# ----------------------------------------------------------------------------------------------------------------

def _media_list(record, attr_key, default_keys):
    keys = (attr_key,) if attr_key else default_keys
    for key in keys:
        value = record.get(key)
        if value is not None:
            return [value] if isinstance(value, str) else value
    return []


def _resolve(path, media_root):
    if path.startswith(("http://", "https://")):
        raise ValueError(f"{path} is a URL; mmx reads local files only (download it and use the local path)")
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(media_root, path))


def _content_text(content):
    """Message content as text with placeholders (list-of-parts content becomes <image>/<video> + text)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                parts.append(part.get("text", ""))
            elif kind in ("image", "video"):
                parts.append(IMAGE_PLACEHOLDER if kind == "image" else VIDEO_PLACEHOLDER)
            else:
                raise ValueError(f"message content part {part!r} is not {{'type': 'text'|'image'|'video'}}")
        return "".join(parts)
    raise ValueError(f"message content must be a string or a list of parts, got {type(content).__name__}")


def to_sample(record, file, index, line=None, attr=None, media_root=None, check_files=True):
    """Normalise one record to a sample dict (module doc); a :class:`DataError` names the file, id and problem."""
    sample_id = record.get("id", f"#{index}") if isinstance(record, dict) else f"#{index}"
    sample_id = str(sample_id)

    def bad(kind, problem):
        return DataError(kind, file, sample_id, problem, line=line)

    if not isinstance(record, dict):
        raise bad(BAD_RECORD, f"a sample must be a JSON object, got {type(record).__name__}")
    style = attr or (MESSAGES_ATTR if "messages" in record and "conversations" not in record else MLLM_ATTR)
    turns = record.get(style["messages"])
    if not isinstance(turns, list) or not turns:
        raise bad(BAD_RECORD, f"no conversation: expected a non-empty list under {style['messages']!r} "
                              f"(keys present: {sorted(record)})")
    roles = ({style["user_tag"]: "user", style["assistant_tag"]: "assistant", style["system_tag"]: "system"}
             if attr else ROLE_ALIASES)
    messages = []
    system = record.get(style["system"]) if style.get("system") else None
    if isinstance(system, str) and system:
        messages.append({"role": "system", "content": system})
    for turn_index, turn in enumerate(turns):
        if not isinstance(turn, dict) or style["role_tag"] not in turn or style["content_tag"] not in turn:
            raise bad(BAD_RECORD, f"turn {turn_index} must be an object with {style['role_tag']!r} and "
                                  f"{style['content_tag']!r}, got {turn!r}"[:300])
        role = roles.get(turn[style["role_tag"]])
        if role is None:
            raise bad(BAD_RECORD, f"turn {turn_index} has unknown role {turn[style['role_tag']]!r}; expected one of "
                                  f"{sorted(roles)} (set attr.user_tag / assistant_tag for other names)")
        try:
            content = _content_text(turn[style["content_tag"]])
        except ValueError as err:
            raise bad(BAD_RECORD, f"turn {turn_index}: {err}") from None
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise bad(BAD_RECORD, "no assistant turn, so nothing would be learned; add the answer turn")

    root = media_root if media_root is not None else os.path.dirname(os.path.abspath(file))
    media = {}
    for kind, attr_key, keys, placeholder in (("images", style["images"], _IMAGE_KEYS, IMAGE_PLACEHOLDER),
                                               ("videos", style["videos"], _VIDEO_KEYS, VIDEO_PLACEHOLDER)):
        paths = _media_list(record, attr_key, keys)
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise bad(BAD_RECORD, f"{kind} must be a path or a list of paths, got {paths!r}"[:300])
        count = sum(m["content"].count(placeholder) for m in messages)
        if count != len(paths):
            raise bad(PLACEHOLDER_MISMATCH, f"{count} {placeholder} placeholder(s) in the text but {len(paths)} "
                                            f"{kind[:-1]} path(s); put one {placeholder} where each {kind[:-1]} goes")
        try:
            media[kind] = [_resolve(p, root) for p in paths]
        except ValueError as err:
            raise bad(MISSING_MEDIA, str(err)) from None
        if check_files:
            for path in media[kind]:
                if not os.path.exists(path):
                    raise bad(MISSING_MEDIA, f"{kind[:-1]} {path} not found (relative paths are read from "
                                             f"dataset_dir {root!r})")
    sample = {"id": sample_id, "file": file, "line": line, "index": index, "messages": messages,
              "images": media["images"], "videos": media["videos"]}
    if isinstance(record.get("box_pixels"), dict):   # pixel boxes of `mmx data convert --target qwen2_5_vl`
        sample["box_pixels"] = record["box_pixels"]
    return sample


# Image tags of other formats that mean nothing to mmx (only <image> / <video> placeholders place media): text holding
# them trains as text. `mmx data check` reports them (mmx.data.check).
FOREIGN_IMAGE_TAGS = (("<img>...</img>", re.compile(r"<img>.*?</img>", re.S), "Qwen-VL's image tags: convert the file "
                       "with mmx data convert --from qwen-vl"),
                      ("<|vision_start|> / <|image_pad|>", re.compile(r"<\|(?:vision_start|image_pad|video_pad)\|>"),
                       "Qwen2-VL chat-template tokens: write one <image> per image instead"),
                      ("<IMG_CONTEXT>", re.compile(r"<IMG_CONTEXT>"), "InternVL's image token: write <image> instead"),
                      ("<|begin_of_image|>", re.compile(r"<\|begin_of_image\|>"),
                       "GLM's image token: write <image> instead"))


def foreign_image_tags(sample):
    """(tag, fix) of the first other format's image tag in ``sample``'s messages, or None."""
    for message in sample["messages"]:
        for name, pattern, fix in FOREIGN_IMAGE_TAGS:
            if pattern.search(message["content"]):
                return name, fix
    return None


def load_samples(file, bad_log, attr=None, media_root=None, max_samples=None):
    """All good samples of one dataset file (bad ones raise or go to ``bad_log``), at most ``max_samples``."""
    samples = []
    try:
        for index, line, record in iter_records(file):
            if max_samples is not None and len(samples) >= max_samples:
                break
            try:
                if isinstance(record, DataError):
                    raise record
                samples.append(to_sample(record, file, index, line, attr, media_root))
            except DataError as err:
                bad_log.report(err)
    except DataError as err:   # the whole file is unreadable
        bad_log.report(err)
    return samples
