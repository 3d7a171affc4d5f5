"""The data config: the one place that reads data keys.

Accepted sources (``load_data_config(path_or_dict)``):

* the guides' ``data.json``: ``{"dataset_param": {"preprocess_parameters": {...}, "basic_parameters": {...}},
  "dataloader_param": {...}}`` — known keys are read from those sections; MindSpeed-MM keys mmx has no use for
  (``dataset_type``, ``template``, ``sampler_type`` ...) are listed in ``DataConfig.ignored`` rather than failing;
* a flat mmx section (YAML or JSON, or the ``data:`` section of a finetune config): unknown keys are an error.

Relative ``dataset`` / ``dataset_dir`` / ``cache_dir`` / ``model_name_or_path`` are resolved against ``base_dir``
(default: the current directory, which is what the guides' relative ``./data`` paths mean).
"""
import json
import os
from dataclasses import dataclass, field, fields

from mmx.data.formats import check_attr

# key: (default, meaning). The order is the order of `mmx data check` output and of the docs.
KEYS = {
    "model_name_or_path": (None, "HF model dir whose AutoProcessor and chat template are used"),
    "dataset_dir": (None, "root of relative image/video paths (default: each dataset file's folder)"),
    "dataset": ((), "dataset files, a comma-separated string or a list (.json array or .jsonl)"),
    "max_samples": (None, "read at most this many samples per dataset file"),
    "cache_dir": (None, "folder for preprocessed samples (none: no cache)"),
    "overwrite_cache": (False, "recompute even when a cache entry exists"),
    "streaming": (False, "iterate the files lazily (sharded by rank/worker, shuffle buffer, resumable)"),
    "buffer_size": (1000, "streaming shuffle buffer size (records)"),
    "cutoff_len": (1024, "max tokens per sample; samples whose image tokens would be cut are dropped"),
    "train_on_prompt": (False, "supervise prompt tokens too (vision placeholder tokens never are)"),
    "mask_history": (False, "supervise only the last assistant turn"),
    "image_max_pixels": (None, "processor max_pixels for images (None: the processor's own)"),
    "image_min_pixels": (None, "processor min_pixels for images"),
    "video_max_pixels": (None, "processor max_pixels per video frame"),
    "video_min_pixels": (None, "processor min_pixels per video frame"),
    "video_fps": (2.0, "frames sampled per second of video"),
    "video_maxlen": (16, "at most this many sampled frames per video"),
    "frame_folder_fps": (2.0, "the fps a folder of frame images was recorded at"),
    "preprocessing_num_workers": (1, "processes that preprocess a map-style dataset"),
    "skip_bad_samples": (False, "skip bad samples (counted and summarised) instead of failing"),
    "attr": (None, "record layout, e.g. {messages: conversations, role_tag: from, ...} (default: auto-detect)"),
    "packing": (False, "pack several samples per row up to cutoff_len (cu_seqlens + per-sample 3-D positions)"),
    "ensure_vision": (True, "a batch with no image gets a zero-weighted dummy image, so all ranks run the ViT"),
    "pad_to_multiple_of": (1, "pad each batch's sequence length to a multiple of this"),
    "seed": (1234, "shuffle seed (map-style order and the streaming buffer)"),
    "shuffle": (True, "shuffle samples"),
    "val_size": (0, "hold out this fraction (< 1) or number (>= 1) of samples as the eval split (finetune)"),
    "mix_ratios": (None, "one weight per dataset file: the share of each file in an epoch (null: each file as is)"),
}

# MindSpeed-MM / LLaMA-Factory data.json keys that mmx reads elsewhere or has no use for.
IGNORED_GUIDE_KEYS = {"dataset_type", "template", "sampler_type", "val_dataset", "val_max_samples", "val_rate",
                      "tokenized_path", "mix_strategy", "interleave_probs", "num_workers", "pin_memory",
                      "shuffle_seed", "collate_param", "drop_last", "dataloader_mode", "split_batches",
                      "image_resolution", "video_resolution", "ignore_pad_token_for_loss", "neat_packing",
                      "tool_format", "freeze_vision_tower"}


@dataclass
class DataConfig:
    """Parsed data keys (see ``KEYS`` for meanings)."""

    model_name_or_path: str = None
    dataset_dir: str = None
    dataset: tuple = ()
    max_samples: int = None
    cache_dir: str = None
    overwrite_cache: bool = False
    streaming: bool = False
    buffer_size: int = 1000
    cutoff_len: int = 1024
    train_on_prompt: bool = False
    mask_history: bool = False
    image_max_pixels: int = None
    image_min_pixels: int = None
    video_max_pixels: int = None
    video_min_pixels: int = None
    video_fps: float = 2.0
    video_maxlen: int = 16
    frame_folder_fps: float = 2.0
    preprocessing_num_workers: int = 1
    skip_bad_samples: bool = False
    attr: dict = None
    packing: bool = False
    ensure_vision: bool = True
    pad_to_multiple_of: int = 1
    seed: int = 1234
    shuffle: bool = True
    val_size: float = 0
    mix_ratios: tuple = None
    source: str = "<dict>"
    ignored: list = field(default_factory=list)

    def preprocess_fingerprint(self):
        """The keys that change what preprocessing produces (part of the cache key)."""
        keys = ("dataset_dir", "max_samples", "cutoff_len", "train_on_prompt", "mask_history", "image_max_pixels",
                "image_min_pixels", "video_max_pixels", "video_min_pixels", "video_fps", "video_maxlen",
                "frame_folder_fps", "skip_bad_samples", "attr")
        return {key: getattr(self, key) for key in keys}


assert [f.name for f in fields(DataConfig)][:len(KEYS)] == list(KEYS), "KEYS and DataConfig fields must agree"


def _read_file(path):
    if path.endswith(".jsonl"):   # a dataset file: one sample per line
        return [path]
    text = read_text(path)
    if path.endswith((".yaml", ".yml")):
        import yaml
        return yaml.safe_load(text) or {}
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: malformed JSON config ({err.msg})") from None


def read_text(path, what="file"):
    """The UTF-8 text of ``path``; a ValueError naming the file and the byte when it is not UTF-8."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path} does not exist")
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason}: byte 0x{data[err.start]:02x} at offset "
                         f"{err.start}); save it as UTF-8, e.g. iconv -f latin1 -t utf-8 {path}") from None


def read_data_file(path):
    """The raw dict of a data config file (guides' data.json or flat YAML/JSON), for a finetune ``data: PATH``."""
    raw = _read_file(path)
    if not isinstance(raw, dict):
        raise ValueError(f"{path} is a dataset file, not a data config: set data.dataset={path} instead")
    return raw


def _flatten_guide(raw, source):
    """Keys of a guides' data.json, pulled from dataset_param.{preprocess,basic}_parameters and dataloader_param."""
    flat, ignored = {}, []
    param = raw["dataset_param"]
    sections = [("dataset_param", {k: v for k, v in param.items() if not isinstance(v, dict) or k == "attr"})]
    for name in ("preprocess_parameters", "basic_parameters"):
        sections.append((f"dataset_param.{name}", param.get(name) or {}))
    sections.append(("dataloader_param", raw.get("dataloader_param") or {}))
    for where, section in sections:
        for key, value in section.items():
            if key in KEYS:
                flat[key] = value
            elif where == "dataloader_param" and key == "shuffle":
                flat["shuffle"] = value
            else:
                ignored.append(f"{where}.{key}")
    return flat, ignored


def _coerce(key, value, source):
    default = KEYS[key][0]
    if value is None:
        return default if key != "attr" else None
    if key == "dataset":
        items = value.split(",") if isinstance(value, str) else list(value)
        items = [item.strip() for item in items if item.strip()]
        if not items:
            raise ValueError(f"{source}: dataset is empty; give one or more dataset files (comma-separated)")
        return tuple(items)
    if key == "attr":
        return check_attr(value, source)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if key in ("video_fps", "frame_folder_fps"):
        return float(value)
    if key == "mix_ratios":
        items = [part.strip() for part in value.split(",")] if isinstance(value, str) else value
        try:
            ratios = tuple(float(item) for item in items)
        except (TypeError, ValueError):
            ratios = ()
        if not ratios or any(not ratio >= 0 for ratio in ratios) or not sum(ratios) > 0:
            raise ValueError(f"{source}: mix_ratios must be one non-negative weight per dataset file, e.g. [0.7, "
                             f"0.3], got {value!r}")
        return ratios
    if key == "val_size":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{source}: val_size must be a fraction below 1 (0.1) or a number of samples, got "
                             f"{value!r}")
        return value
    if key in ("max_samples", "cutoff_len", "image_max_pixels", "image_min_pixels", "video_max_pixels",
               "video_min_pixels", "video_maxlen", "preprocessing_num_workers", "buffer_size", "seed",
               "pad_to_multiple_of"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{source}: {key} must be a non-negative integer, got {value!r}")
        return value
    return str(value)


def unknown_key_message(unknown, known, where):
    """``where: unknown key K (did you mean 'k'?)`` for the first of ``unknown``, or None when all are known."""
    import difflib

    unknown = sorted(set(unknown) - set(known), key=str)
    if not unknown:
        return None
    key = unknown[0]
    close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(map(str, known))}"
    more = f" (and {len(unknown) - 1} more unknown: {', '.join(map(str, unknown[1:]))})" if len(unknown) > 1 else ""
    return f"{where}: unknown key {key!r}{hint}{more}"


def check_data_keys(section, where):
    """ValueError naming the first unknown key of a flat data ``section`` (did-you-mean), e.g. data.cutof_len."""
    if isinstance(section, dict) and "dataset_param" not in section:
        message = unknown_key_message(section, KEYS, where)
        if message:
            raise ValueError(message)


def load_data_config(config, base_dir=None, **overrides):
    """A :class:`DataConfig` from a path (``.json`` / ``.yaml``) or a dict, guides' nested or flat mmx style.

    A path to a dataset file itself (a ``.jsonl``, or a ``.json`` holding an array of samples) is read as
    ``{dataset: path}``; its processor then comes from the ``model_name_or_path`` override.
    """
    source = config if isinstance(config, str) else "<dict>"
    raw = _read_file(config) if isinstance(config, str) else dict(config or {})
    if isinstance(raw, list):   # a dataset file, not a config
        if not overrides.get("model_name_or_path"):
            raise ValueError(f"{source} is a dataset file (a list of samples), not a data config: give the model "
                             f"whose processor encodes it, e.g. mmx data check --config {source} "
                             f"--model-name-or-path HF_DIR")
        raw = {"dataset": [os.path.abspath(source)]}
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: a data config must be a mapping of data keys (or the guides' data.json), got "
                         f"{type(raw).__name__}")
    if "data" in raw and isinstance(raw["data"], dict) and "dataset_param" not in raw:
        # a finetune config: its data section, with the model dir as the default processor source (as finetune does)
        model_dir = (raw.get("model") or {}).get("init_from_hf_path")
        raw = dict(raw["data"])
        if model_dir and not raw.get("model_name_or_path"):
            raw["model_name_or_path"] = model_dir
    if "dataset_param" in raw:
        flat, ignored = _flatten_guide(raw, source)
    else:
        flat, ignored = raw, []
        check_data_keys(flat, source)
    flat.update({k: v for k, v in overrides.items() if v is not None})
    values = {key: _coerce(key, flat.get(key), source) for key in KEYS}
    base = base_dir or os.getcwd()
    for key in ("dataset_dir", "cache_dir", "model_name_or_path"):
        if values[key] is not None:
            values[key] = os.path.normpath(os.path.join(base, values[key]))
    values["dataset"] = tuple(_resolve_dataset(path, base, values["dataset_dir"], source)
                              for path in values["dataset"])
    if not values["dataset"]:
        raise ValueError(f"{source}: no dataset given; set dataset (comma-separated dataset files)")
    if values["mix_ratios"] is not None and len(values["mix_ratios"]) != len(values["dataset"]):
        raise ValueError(f"{source}: mix_ratios has {len(values['mix_ratios'])} weights for "
                         f"{len(values['dataset'])} dataset files; give one per file, in the order of dataset")
    if values["cutoff_len"] < 8:
        raise ValueError(f"{source}: cutoff_len {values['cutoff_len']} is too small for a chat turn (use >= 8)")
    return DataConfig(**values, source=source, ignored=ignored)


def _resolve_dataset(path, base, dataset_dir, source):
    """A dataset file relative to the current dir, else relative to dataset_dir (the guides use both)."""
    if os.path.isabs(path):
        return path
    candidates = [os.path.normpath(os.path.join(base, path))]
    if dataset_dir:
        candidates.append(os.path.normpath(os.path.join(dataset_dir, path)))
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    return candidates[0]
