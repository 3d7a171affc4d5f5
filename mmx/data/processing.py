"""One sample → token ids, labels and pixel arrays, with the model dir's own AutoProcessor and chat template.

Nothing here resizes images or builds prompts by hand: the chat template renders the conversation, the processor
resizes images / videos and expands each ``<|image_pad|>`` into ``grid_t*grid_h*grid_w / merge**2`` copies.

Labels (unshifted, HF convention: ``labels[s]`` is the target at position ``s``; the loss shifts). The assistant
part of each turn is found by rendering the conversation prefix by prefix: turn ``i``'s supervised text is
``render(messages[:i+1])`` minus ``render(messages[:i], add_generation_prompt=True)`` — the answer and the template's
end-of-turn marker (``answer<|im_end|>\\n`` for Qwen). So masking follows whatever template the model dir ships.
A template whose assistant turn closes with no special token (GLM-4.1V: ``<|assistant|>\\nanswer``, the next
``<|user|>`` ends the turn and is a stop id of its generation config) gets that next role token supervised after
each answer, and appended after a final one, so the model learns to stop (GLM-4's own fine-tuning appends
``<|user|>`` as its chat EOS). Thinking-style answers (``<think>…</think><answer>…</answer>``) are answer text.
Messages without media reach the template as plain strings (GLM's renders assistant turns from strings only).
``train_on_prompt`` supervises every token; ``mask_history`` only the last assistant turn. Image / video placeholder
tokens are never supervised.

InternVL3's processor (GotOcr2 tiles) writes ``<img>`` + ``<IMG_CONTEXT>`` x ``image_seq_length`` per tile +
``</img>`` per image and ``Frame{i}: <img>...</img>`` lines per video, all tiles in one ``pixel_values``
(N_tiles, 3, S, S) with no grid; ``<img>`` / ``</img>`` are its wrappers (truncation, the dummy image).

Truncation at ``cutoff_len`` keeps the first tokens; a sample whose vision tokens reach past the cut is dropped
(kind ``cut_through_image``), never cut, and one with no supervised token left is dropped too.
"""
import hashlib
import json
import os
import re

import numpy as np

from mmx.data.errors import BAD_RECORD, CUT_THROUGH_IMAGE, NO_LABELS, DataError
from mmx.data.formats import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER
from mmx.data.media import load_image, load_video

IGNORE_INDEX = -100
FORMAT_VERSION = 1          # bump when the encoded sample layout changes (part of the cache key)
_PLACEHOLDER_RE = re.compile(f"({re.escape(IMAGE_PLACEHOLDER)}|{re.escape(VIDEO_PLACEHOLDER)})")
# Files of a model dir that change what the processor and template produce (cache key).
# The tokens around vision placeholders: Qwen's (images and videos), GLM's images, GLM's videos.
VISION_WRAPPERS = (("<|vision_start|>", "<|vision_end|>"), ("<|begin_of_image|>", "<|end_of_image|>"),
                   ("<|begin_of_video|>", "<|end_of_video|>"))
PROCESSOR_FILES = ("preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json",
                   "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt")


def hf_messages(messages):
    """mmx messages (text with <image>/<video>) → the chat template's content-part form; a message without media
    keeps its text as a plain string (every template renders those; GLM-4.1V's assistant turns need it)."""
    converted = []
    for message in messages:
        if not _PLACEHOLDER_RE.search(message["content"]):
            converted.append({"role": message["role"], "content": message["content"]})
            continue
        parts = []
        for piece in _PLACEHOLDER_RE.split(message["content"]):
            if piece == IMAGE_PLACEHOLDER:
                parts.append({"type": "image"})
            elif piece == VIDEO_PLACEHOLDER:
                parts.append({"type": "video"})
            elif piece:
                parts.append({"type": "text", "text": piece})
        converted.append({"role": message["role"], "content": parts})
    return converted


class Preprocessor:
    """Encodes samples with the processor of ``config.model_name_or_path`` (see module doc for labels).

    ``encode(sample)`` returns ``{"id", "input_ids" (S,) int64, "labels" (S,) int64}`` plus, when present,
    ``"pixel_values" (P, C*T*p*p) float32``, ``"image_grid_thw" (N, 3) int64``, ``"pixel_values_videos"``,
    ``"video_grid_thw" (V, 3) int64`` and ``"second_per_grid_ts" (V,) float32``.
    """

    def __init__(self, config, processor=None):
        from transformers import AutoProcessor

        if processor is None:
            if not config.model_name_or_path or not os.path.isdir(config.model_name_or_path):
                raise ValueError(f"{config.source}: model_name_or_path {config.model_name_or_path!r} is not a "
                                 f"directory; point it at the HF model dir (the one before conversion)")
            _refuse_foreign_config(config.model_name_or_path)
            processor = AutoProcessor.from_pretrained(config.model_name_or_path)
        if not getattr(processor, "chat_template", None):
            raise ValueError(f"{config.model_name_or_path}: the processor has no chat template "
                             f"(chat_template.jinja); use an instruct model dir")
        self.config, self.processor, self.tokenizer = config, processor, processor.tokenizer
        self.image_token_id = processor.image_token_id
        self.video_token_id = getattr(processor, "video_token_id", None)      # InternVL: frames are image tiles
        vocab = self.tokenizer.get_vocab()
        # InternVLProcessor names its own wrappers (<img> / </img>); elsewhere the known pairs the vocabulary has
        tiles = getattr(processor, "start_image_token", None), getattr(processor, "end_image_token", None)
        wrappers = (tiles,) if all(tiles) else VISION_WRAPPERS
        self.wrapper_ids = [vocab[token] for pair in wrappers for token in pair if token in vocab]
        # the first pair the vocabulary has wraps images (the dummy image's placeholders)
        start, end = next((pair for pair in wrappers if all(t in vocab for t in pair)), (None, None))
        self.vision_start_id, self.vision_end_id = vocab.get(start), vocab.get(end)
        self.turn_end = self._turn_end()
        self.pad_token_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.merge_size = getattr(processor.image_processor, "merge_size", None)      # None: tiles (InternVL)
        self.images_kwargs = _size_kwargs(processor.image_processor, config.image_min_pixels,
                                          config.image_max_pixels, config.source)
        self.videos_kwargs = dict(_size_kwargs(processor.video_processor, config.video_min_pixels,
                                               config.video_max_pixels, config.source), do_sample_frames=False)
        # InternVLProcessor flattens video frames with torch's Tensor.flatten: it needs "pt" tensors back
        self.return_tensors = "pt" if type(processor).__name__ == "InternVLProcessor" else "np"
        self._dummy = None

    def _check_box_pixels(self, sample):
        """A DataError when the sample's boxes (pixels of images resized with ``box_pixels``, written by ``mmx data
        convert --target qwen2_5_vl``) assume another resize than this processor's."""
        size = self.images_kwargs.get("size") or self.processor.image_processor.size
        now = {"image_min_pixels": size.get("shortest_edge"), "image_max_pixels": size.get("longest_edge")}
        wrong = {key: (value, now.get(key)) for key, value in sample["box_pixels"].items() if now.get(key) != value}
        if wrong:
            fix = " and ".join(f"data.{key}: {value}" for key, (value, _) in wrong.items())
            raise DataError(BAD_RECORD, sample["file"], sample["id"],
                            f"its boxes are pixels of images resized with "
                            f"{', '.join(f'{key} {value}' for key, (value, _) in wrong.items())}, but training "
                            f"resizes with {', '.join(f'{key} {current}' for key, (_, current) in wrong.items())}; set "
                            f"{fix} (or convert again with these pixels)", line=sample.get("line"))

    # -- identity ------------------------------------------------------------------------------------------------

    def fingerprint(self):
        """sha256 of the processor files, the chat template, the preprocessing keys and the format version."""
        digest = hashlib.sha256()
        directory = self.config.model_name_or_path or ""
        for name in PROCESSOR_FILES:
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                digest.update(name.encode())
                with open(path, "rb") as f:
                    digest.update(f.read())
        digest.update(self.processor.chat_template.encode())
        digest.update(json.dumps(self.config.preprocess_fingerprint(), sort_keys=True, default=str).encode())
        digest.update(f"format{FORMAT_VERSION}".encode())
        return digest.hexdigest()

    def vision_token_ids(self):
        return [i for i in (self.image_token_id, self.video_token_id, *self.wrapper_ids) if i is not None]

    def _turn_end(self):
        """The special token that ends an assistant turn when the template writes none itself (GLM: the next
        ``<|user|>``), found by rendering a probe conversation; None when a turn's own text ends with one (Qwen's
        ``<|im_end|>``)."""
        probe = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                 {"role": "user", "content": "q"}]
        try:
            prompt, turn = self.render(probe[:1], add_generation_prompt=True), self.render(probe[:2])
            following = self.render(probe)
        except Exception:  # noqa: BLE001 - a template that cannot render the probe keeps the default masking
            return None
        special = [t.content for t in self.tokenizer.added_tokens_decoder.values() if t.special]
        if not turn.startswith(prompt) or any(t in turn[len(prompt):] for t in special):
            return None
        rest = following[len(turn):]
        found = [(rest.find(t), t) for t in special if rest.find(t) >= 0]
        return min(found)[1] if found and rest[:min(found)[0]].strip() == "" else None

    # -- encoding ------------------------------------------------------------------------------------------------

    def render(self, messages, add_generation_prompt=False):
        return self.processor.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def assistant_spans(self, messages):
        """Full rendered text and the [start, end) character spans of each assistant turn (module doc)."""
        text = self.render(messages)
        if self.turn_end and messages and messages[-1]["role"] == "assistant":
            text += self.turn_end          # the final answer ends like the others (module doc)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self.render(messages[:i], add_generation_prompt=True) if i else ""
            upto = self.render(messages[:i + 1])
            if not (upto.startswith(prompt) and text.startswith(upto)):
                raise ValueError(f"{self.config.model_name_or_path}: the chat template does not render a "
                                 f"conversation as a prefix of its continuation, so assistant turns cannot be found "
                                 f"for label masking (turn {i})")
            end = len(upto)
            if self.turn_end:              # supervise the whitespace and role token that end the turn
                rest = text[end:]
                gap = len(rest) - len(rest.lstrip())
                if rest[gap:].startswith(self.turn_end):
                    end += gap + len(self.turn_end)
            spans.append((len(prompt), end))
        return text, spans

    def encode(self, sample):
        """The encoded sample (class doc) or a :class:`DataError` (bad media, image cut by cutoff_len, no labels)."""
        cfg = self.config
        if sample.get("box_pixels"):
            self._check_box_pixels(sample)
        images = [load_image(path, sample) for path in sample["images"]]
        videos, metadata = [], []
        for path in sample["videos"]:
            frames, meta = load_video(path, sample, cfg.video_fps, cfg.video_maxlen, cfg.frame_folder_fps)
            videos.append(frames)
            metadata.append(meta)
        messages = hf_messages(sample["messages"])
        text, spans = self.assistant_spans(messages)
        kwargs = {}
        if images:
            kwargs.update(images=images, images_kwargs=self.images_kwargs)
        if videos:
            kwargs.update(videos=videos, videos_kwargs=dict(self.videos_kwargs, video_metadata=metadata))
        out = self.processor(text=[text], return_tensors=self.return_tensors, return_offsets_mapping=True,
                             return_text_replacement_offsets=True, add_special_tokens=False, **kwargs)
        input_ids = np.asarray(_numpy(out["input_ids"])[0], dtype=np.int64)
        labels = self._labels(input_ids, np.asarray(_numpy(out["offset_mapping"])[0]), spans,
                              out.get("text_replacement_offsets", [[]])[0])
        input_ids, labels = self._truncate(sample, input_ids, labels)
        encoded = {"id": sample["id"], "input_ids": input_ids, "labels": labels}
        for key, dtype in (("pixel_values", np.float32), ("image_grid_thw", np.int64),
                           ("pixel_values_videos", np.float32), ("video_grid_thw", np.int64),
                           ("second_per_grid_ts", np.float32)):
            if key in out and out[key] is not None and len(out[key]):
                encoded[key] = np.asarray(_numpy(out[key]), dtype=dtype)
        if "video_grid_thw" in encoded and "second_per_grid_ts" not in encoded:
            # Qwen2-VL's processor has no second_per_grid_ts; one temporal patch per 1/fps*temporal_patch seconds.
            temporal = self.processor.video_processor.temporal_patch_size
            encoded["second_per_grid_ts"] = np.asarray([temporal / m.sampled_fps for m in metadata], np.float32)
        return encoded

    def _labels(self, input_ids, offsets, spans, replacements):
        labels = np.full_like(input_ids, IGNORE_INDEX)
        if self.config.train_on_prompt:
            labels[:] = input_ids
        else:
            chosen = spans[-1:] if self.config.mask_history else spans
            # spans are in the rendered text; offsets are in the text after placeholder expansion.
            shifts = sorted((r["span"][1], (r["new_span"][1] - r["new_span"][0]) - (r["span"][1] - r["span"][0]))
                            for r in replacements)
            starts = offsets[:, 0]
            for start, end in chosen:
                new_start = start + sum(d for pos, d in shifts if pos <= start)
                new_end = end + sum(d for pos, d in shifts if pos <= end)
                inside = (starts >= new_start) & (starts < new_end)
                labels[inside] = input_ids[inside]
        for token in (self.image_token_id, self.video_token_id):
            labels[input_ids == token] = IGNORE_INDEX
        return labels

    def _truncate(self, sample, input_ids, labels):
        cutoff = self.config.cutoff_len
        if len(input_ids) > cutoff:
            vision = np.isin(input_ids, self.vision_token_ids())
            if vision[cutoff:].any():
                last = int(np.nonzero(vision)[0][-1])
                raise DataError(CUT_THROUGH_IMAGE, sample["file"], sample["id"],
                                f"{len(input_ids)} tokens > cutoff_len {cutoff} and its image/video tokens reach "
                                f"position {last}; dropped (raise cutoff_len or lower image_max_pixels)",
                                line=sample.get("line"))
            input_ids, labels = input_ids[:cutoff], labels[:cutoff]
        if not (labels != IGNORE_INDEX).any():
            raise DataError(NO_LABELS, sample["file"], sample["id"],
                            f"no supervised token within cutoff_len {cutoff}; dropped", line=sample.get("line"))
        return input_ids, labels

    # -- the dummy image of mixed batches --------------------------------------------------------------------------

    def dummy_image(self):
        """(token ids, pixel_values, image_grid_thw) of the smallest image the processor makes (a black square);
        tiles (InternVL): one tile, ``image_seq_length`` tokens, grid None."""
        if self._dummy is None:
            from PIL import Image

            image_processor = self.processor.image_processor
            if self.merge_size is None:
                side = image_processor.size["height"]
                out = image_processor(images=[Image.new("RGB", (side, side))], return_tensors="np",
                                      **self.images_kwargs)
                pixels = np.asarray(out["pixel_values"], np.float32)
                count = self.processor.image_seq_length * len(pixels)
                ids = np.asarray([self.vision_start_id] + [self.image_token_id] * count + [self.vision_end_id],
                                 np.int64)
                self._dummy = (ids, pixels, None)
                return self._dummy
            side = image_processor.patch_size * self.merge_size
            out = image_processor(images=[Image.new("RGB", (side, side))], return_tensors="np", **self.images_kwargs)
            grid = np.asarray(out["image_grid_thw"], dtype=np.int64)
            count = int(grid.prod()) // self.merge_size ** 2
            ids = np.asarray([self.vision_start_id] + [self.image_token_id] * count + [self.vision_end_id], np.int64)
            self._dummy = (ids, np.asarray(out["pixel_values"], np.float32), grid)
        return self._dummy


def _refuse_foreign_config(model_dir):
    from mmx.models import foreign_config_error

    path = os.path.join(model_dir, "config.json")
    if os.path.isfile(path):
        with open(path) as f:
            foreign = foreign_config_error(json.load(f).get("model_type"), path)
        if foreign:
            raise ValueError(foreign)


def _numpy(value):
    return value.numpy() if hasattr(value, "numpy") else value


def _size_kwargs(image_or_video_processor, min_pixels, max_pixels, source):
    """The processor's ``size`` with the config's min/max pixels, when given."""
    if min_pixels is None and max_pixels is None:
        return {}
    if "shortest_edge" not in image_or_video_processor.size:
        name = type(image_or_video_processor).__name__
        raise ValueError(f"{source}: image/video min/max pixels do not apply to {name} (fixed "
                         f"{image_or_video_processor.size} tiles); remove them and set max_patches in the model dir's "
                         f"preprocessor_config.json to bound the tiles per image")
    size = dict(image_or_video_processor.size)
    if min_pixels is not None:
        size["shortest_edge"] = min_pixels
    if max_pixels is not None:
        size["longest_edge"] = max_pixels
    return {"size": size}
