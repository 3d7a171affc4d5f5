"""Converters from public dataset layouts to the mmx / MindSpeed-MM messages format.

Output records (written as a ``.json`` array, or ``.jsonl`` when the output name ends so)::

    {"id": ..., "messages": [{"role": "user", "content": "<image>\\n..."}, {"role": "assistant", ...}],
     "images": ["<image-dir>/000000033471.jpg"]}            # no "images" key for text-only records

``llava``: LLaVA-Instruct-150K (``{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}]}``); image
file names are joined to ``image_dir`` (e.g. ``./data/COCO2017/train2017``), as the guides' conversion script does.

``qwen-vl``: the Qwen-VL fine-tuning format: ``Picture 1: <img>path</img>\\n`` becomes an ``<image>`` placeholder
(+ the path in ``images``) and grounding ``<ref>text</ref><box>(x1,y1),(x2,y2)</box>`` (corners normalised to
[0, 1000) of the image) is rewritten in the target model's convention:

* ``qwen2_vl``: ``<|object_ref_start|>text<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``, the same
  [0, 1000) numbers (Qwen2-VL kept Qwen-VL's normalised boxes, with its own special tokens);
* ``qwen2_5_vl``: ``{"bbox_2d": [x1, y1, x2, y2], "label": "text"}`` in absolute pixels of the image *as the
  processor resizes it* (Qwen2.5-VL grounds in absolute coordinates of its input): ``x = round(x_norm / 1000 * W')``
  with ``(H', W')`` from transformers' ``smart_resize`` under the model dir's (or given) min/max pixels. Train with
  the same ``image_min_pixels`` / ``image_max_pixels``, or the boxes will not match the pixels the model sees;
* ``qwen3_vl``: ``{"bbox_2d": [x1, y1, x2, y2], "label": "text"}`` with the same [0, 1000) numbers (Qwen3-VL grounds
  in coordinates relative to the image on a 0-1000 grid, whatever its size: the Qwen3-VL cookbook's
  "spatial_understanding"), so neither a processor nor the image is read. A ``<ref>text</ref>`` with no box after
  it becomes the plain ``text`` (the tags are Qwen-VL's tokens, not Qwen3-VL's); the other targets keep it as is.

For ``qwen2_5_vl`` and ``qwen3_vl``, boxes that follow one another make one object each, joined by ``, ``; the
``label`` is the ``<ref>`` before them, and an object has no ``label`` when there is no ``<ref>``.

A box refers to the latest image placed at or before its turn.

The input layout is checked before anything is written (:func:`detect_layout`; ``source="auto"`` takes it): a
Qwen-VL file given as ``llava`` (its ``<img>`` tags would stay text) or a LLaVA file given as ``qwen-vl`` is refused,
and so is a file already in the messages format. ``target`` defaults to the ``--model-dir``'s model type, else
``qwen2_5_vl``; the processor is read only when a ``qwen2_5_vl`` box is rewritten.

Paths follow the one rule of docs/data.md: a relative image path of the input is relative to the input file's folder,
or to ``image_dir`` when given (itself relative to the working directory, like any command-line path); the output
holds each image relative to the output file's folder, which is where the loader (finetune, ``mmx data check``)
looks when ``dataset_dir`` is not set.
"""
import json
import os
import re

from mmx.data.errors import DataError
from mmx.data.formats import IMAGE_PLACEHOLDER, ROLE_ALIASES, iter_records

SOURCES = ("llava", "qwen-vl")
LAYOUT_HINTS = {"llava": "LLaVA-Instruct (an 'image' key and <image> in the human turn)",
                "qwen-vl": "Qwen-VL (<img>path</img> in the turns)",
                "messages": "the messages format mmx reads already ('messages' turns)"}
TARGETS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
_IMG_RE = re.compile(r"(?:Picture \d+:\s*)?<img>(.*?)</img>\n?")
_BOX = r"<box>\((\d+),(\d+)\),\((\d+),(\d+)\)</box>"
_REF = r"<ref>((?:(?!</ref>).)*)</ref>"   # one ref's text: never reaches across a </ref> to a later ref's box
_GROUND_RE = re.compile(rf"(?:{_REF})?((?:{_BOX})+)")
_REF_RE = re.compile(_REF)


class ConvertError(ValueError):
    """A record that cannot be converted; names the input file, record and problem."""


def _read(path):
    """The records of a .json array / .jsonl file (formats.iter_records); a malformed one is a ConvertError."""
    try:
        records = []
        for _, _, record in iter_records(path):
            if isinstance(record, DataError):
                raise record
            records.append(record)
        return records
    except DataError as err:
        raise ConvertError(str(err)) from None


def detect_layout(records):
    """(layout, evidence) of a file's records: ``"qwen-vl"`` when a turn holds ``<img>...</img>``, ``"llava"`` when a
    record has an ``image`` key or ``<image>`` in a turn, ``"messages"`` when records have ``messages`` turns; (None,
    "") when nothing tells."""
    counts = {"qwen-vl": 0, "llava": 0, "messages": 0}
    for record in records:
        if not isinstance(record, dict):
            continue
        if "messages" in record and "conversations" not in record:
            counts["messages"] += 1
            continue
        turns = record.get("conversations") if isinstance(record.get("conversations"), list) else []
        values = [turn.get("value") for turn in turns if isinstance(turn, dict) and isinstance(turn.get("value"), str)]
        if any(_IMG_RE.search(value) for value in values):
            counts["qwen-vl"] += 1
        elif record.get("image") or any(IMAGE_PLACEHOLDER in value for value in values):
            counts["llava"] += 1
    layout = max(counts, key=counts.get)
    if not counts[layout]:
        return None, ""
    return layout, f"{counts[layout]} of {len(records)} records look like {LAYOUT_HINTS[layout]}"


def _turns(record, path, index):
    turns = record.get("conversations") if isinstance(record, dict) else None
    rid = record.get("id", f"#{index}") if isinstance(record, dict) else f"#{index}"
    if not isinstance(turns, list) or not turns:
        raise ConvertError(f"{path} record {rid!r}: no 'conversations' list")
    out = []
    for turn in turns:
        role = ROLE_ALIASES.get(turn.get("from")) if isinstance(turn, dict) else None
        if role is None or not isinstance(turn.get("value"), str):
            raise ConvertError(f"{path} record {rid!r}: turn {turn!r} needs 'from' (human/gpt/user/assistant) and "
                               f"a string 'value'"[:300])
        out.append((role, turn["value"]))
    return str(rid), out


def llava_record(record, path, index, image_dir=None):
    """One LLaVA-Instruct record → the messages format (module doc)."""
    rid, turns = _turns(record, path, index)
    out = {"id": rid, "messages": [{"role": role, "content": value} for role, value in turns]}
    image = record.get("image")
    if image:
        out["images"] = [os.path.join(image_dir, image) if image_dir else image]
        count = sum(value.count(IMAGE_PLACEHOLDER) for _, value in turns)
        if count != 1:
            raise ConvertError(f"{path} record {rid!r}: has an image but {count} {IMAGE_PLACEHOLDER} placeholders "
                               f"(LLaVA puts exactly one in the first human turn)")
    return out


class BoxWriter:
    """Rewrites Qwen-VL grounding for ``target`` (module doc); image sizes are read lazily for qwen2_5_vl."""

    def __init__(self, target, model_dir=None, min_pixels=None, max_pixels=None, image_root=None):
        if target not in TARGETS:
            raise ValueError(f"unknown box target {target!r}; choose one of {', '.join(TARGETS)}")
        self.target, self.image_root = target, image_root
        self.model_dir, self.min_pixels, self.max_pixels = model_dir, min_pixels, max_pixels
        self.factor = None
        self.resized = 0   # boxes written in pixels of a resized image

    def _processor(self):
        """The resize parameters of the model dir's image processor, read at the first qwen2_5_vl box."""
        if self.factor is not None:
            return
        if self.model_dir is None:
            raise ConvertError("--target qwen2_5_vl writes boxes in pixels of the image as the processor resizes "
                               "it, so it needs --model-dir (the HF dir whose image processor resizes the images); "
                               "or choose --target qwen2_vl / qwen3_vl, which keep the 0-1000 numbers")
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(self.model_dir)
        self.factor = processor.patch_size * processor.merge_size
        self.min_pixels = self.min_pixels or processor.size["shortest_edge"]
        self.max_pixels = self.max_pixels or processor.size["longest_edge"]

    def resized_size(self, image_path):
        """(height, width) the processor resizes ``image_path`` to (transformers' smart_resize)."""
        from PIL import Image
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        self._processor()
        self.resized += 1
        path = image_path if os.path.isabs(image_path) or not self.image_root else os.path.join(self.image_root,
                                                                                              image_path)
        with Image.open(path) as image:
            width, height = image.size
        return smart_resize(height, width, factor=self.factor, min_pixels=self.min_pixels, max_pixels=self.max_pixels)

    def rewrite(self, text, image_path):
        def one(match):
            label, boxes = match.group(1), re.findall(_BOX, match.group(2))
            if self.target == "qwen2_vl":
                ref = f"<|object_ref_start|>{label}<|object_ref_end|>" if label is not None else ""
                return ref + "".join(f"<|box_start|>({a},{b}),({c},{d})<|box_end|>" for a, b, c, d in boxes)
            boxes = [tuple(map(int, box)) for box in boxes]
            if self.target == "qwen2_5_vl":
                if image_path is None:
                    raise ConvertError("a <box> appears before any image; cannot make absolute coordinates")
                height, width = self.resized_size(image_path)
                boxes = [(round(a / 1000 * width), round(b / 1000 * height),
                          round(c / 1000 * width), round(d / 1000 * height)) for a, b, c, d in boxes]
            return ", ".join(json.dumps({"bbox_2d": list(box)} if label is None else
                                        {"bbox_2d": list(box), "label": label}, ensure_ascii=False)
                             for box in boxes)

        text = _GROUND_RE.sub(one, text)
        return _REF_RE.sub(r"\1", text) if self.target == "qwen3_vl" else text


def qwen_vl_record(record, path, index, boxes, image_dir=None):
    """One Qwen-VL record → the messages format with boxes rewritten by ``boxes`` (a :class:`BoxWriter`)."""
    rid, turns = _turns(record, path, index)
    images, messages, resized = [], [], boxes.resized
    for role, value in turns:
        found = _IMG_RE.findall(value)
        images.extend(_absolute(p, path, image_dir) for p in found)
        text = _IMG_RE.sub(IMAGE_PLACEHOLDER, value)
        try:
            text = boxes.rewrite(text, images[-1] if images else None)
        except (ConvertError, OSError) as err:
            raise ConvertError(f"{path} record {rid!r}: {err}") from None
        messages.append({"role": role, "content": text})
    out = {"id": rid, "messages": messages}
    if images:
        out["images"] = images
    if boxes.resized > resized:   # the resize its pixel boxes assume: the loader checks training's against it
        out["box_pixels"] = {"image_min_pixels": boxes.min_pixels, "image_max_pixels": boxes.max_pixels}
    return out


def _absolute(image, input_path, image_dir=None):
    """An input image path made absolute: joined to ``image_dir`` when given (a command-line path: relative to the
    working directory), else relative to the input file's folder."""
    if image_dir and not os.path.isabs(image):
        return os.path.abspath(os.path.join(image_dir, image))
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(input_path)), image))


def _relative_to_output(record, output_path):
    """``record`` with its images relative to the output file's folder (where the loader reads them from)."""
    if "images" in record:
        folder = os.path.dirname(os.path.abspath(output_path))
        record["images"] = [os.path.relpath(os.path.abspath(path), folder) for path in record["images"]]
    return record


def model_target(model_dir):
    """The box target of an HF model dir (its config.json model_type), or qwen2_5_vl when it names none of them."""
    try:
        with open(os.path.join(model_dir, "config.json")) as handle:
            model_type = json.load(handle).get("model_type")
    except (OSError, ValueError):
        model_type = None
    return model_type if model_type in TARGETS else "qwen2_5_vl"


def convert_file(source, input_path, output_path, image_dir=None, target=None, model_dir=None,
                 min_pixels=None, max_pixels=None, skip_bad=False):
    """Convert ``input_path`` to ``output_path``; returns ``{"converted": n, "skipped": m, "errors": [...], "from":
    layout, "target": ...}``. ``source``: ``llava``, ``qwen-vl`` or ``auto`` (detected)."""
    if source not in SOURCES + ("auto",):
        raise ValueError(f"unknown source format {source!r}; choose one of {', '.join(SOURCES)} or auto")
    records = _read(input_path)
    detected, evidence = detect_layout(records)
    if detected == "messages":
        raise ConvertError(f"{input_path}: {evidence}; nothing to convert: train on it directly "
                           f"(data.dataset: {input_path})")
    if source == "auto":
        if detected is None:
            raise ConvertError(f"{input_path}: cannot tell its layout (no <img> tags, 'image' keys or <image> "
                               f"placeholders); give --from llava or --from qwen-vl")
        source = detected
    elif detected is not None and detected != source:
        raise ConvertError(f"{input_path}: --from {source}, but {evidence}; use --from {detected} (or --from auto)")
    target = target or (model_target(model_dir) if model_dir else "qwen2_5_vl")
    # relative image paths (after joining image_dir) are read from the input file's folder for their sizes
    boxes = BoxWriter(target, model_dir, min_pixels, max_pixels, image_root=os.path.dirname(
        os.path.abspath(input_path))) if source == "qwen-vl" else None
    converted, errors = [], []
    for index, record in enumerate(records):
        try:
            if source == "llava":
                out = llava_record(record, input_path, index)
                if "images" in out:
                    out["images"] = [_absolute(p, input_path, image_dir) for p in out["images"]]
            else:
                out = qwen_vl_record(record, input_path, index, boxes, image_dir)
            converted.append(_relative_to_output(out, output_path))
        except ConvertError as err:
            if not skip_bad:
                raise
            errors.append(str(err))
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    tmp = f"{output_path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        if output_path.endswith(".jsonl"):
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in converted)
        else:
            json.dump(converted, f, ensure_ascii=False, indent=1)
    os.replace(tmp, output_path)
    result = {"converted": len(converted), "skipped": len(errors), "errors": errors[:20], "from": source}
    if boxes is not None:
        result["target"] = target
        if boxes.resized:   # the pixels the boxes are in: training must resize the same way
            result["box_pixels"] = {"image_min_pixels": boxes.min_pixels, "image_max_pixels": boxes.max_pixels}
    return result
