"""The transformers reference runner: the only module outside backends/ that imports torch.

It builds inputs the way users' data does — the checkpoint's own ``AutoProcessor`` and chat template over synthetic
images of two sizes, a short video and a text-only prompt — and runs the transformers model in float32 with eager
attention, returning numpy arrays. ``mmx verify`` and the model tests compare mmx against it. transformers' GLM-4.1V
cannot mix image and video rows in one batch (its video frames use the image token), so such a batch runs as two
row groups with the same padding (:func:`_row_groups`); the loss is the mean over all supervised tokens either way.
"""
import functools

import numpy as np

# Synthetic media: two image sizes (they resize to different grids under the tiny processors' pixel limits) and a
# 4-frame video (2 temporal patches) at 2 fps: Qwen2.5-VL's second_per_grid_ts is then 1 s, so its two temporal
# patches sit tokens_per_second positions apart (at the default 24 fps they would share one position).
IMAGE_SIZES = ((60, 90), (56, 56))
VIDEO_SHAPE = (4, 56, 84)
VIDEO_FPS = 2.0
MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "pixel_values_videos",
                "video_grid_thw", "second_per_grid_ts", "mm_token_type_ids")


def _images(seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in IMAGE_SIZES]


def _video(seed):
    rng = np.random.default_rng(seed + 1)
    return rng.integers(0, 256, VIDEO_SHAPE + (3,), dtype=np.uint8)


SAMPLES = {
    # name: (chat content, number of images, number of videos)
    "image_large": ([{"type": "image"}, {"type": "text", "text": "Describe the image."}], 1, 0),
    "image_small": ([{"type": "image"}, {"type": "text", "text": "What is in the picture?"}], 1, 0),
    "video": ([{"type": "video"}, {"type": "text", "text": "What does the video show?"}], 0, 1),
    "text": ([{"type": "text", "text": "The quick brown fox jumps over the lazy dog."}], 0, 0),
}


def build_inputs(hf_dir, names=tuple(SAMPLES), padding_side="right", seed=0, with_labels=False):
    """Processor outputs as numpy for the ``names`` samples batched together (padded on ``padding_side``).

    Images go to the image samples in order (large, then small), the video to the video sample. With
    ``with_labels``, ``labels`` = input_ids with padding set to -100 (the assistant-free prompt is all trained on,
    which is enough to compare losses and gradients). → {name: array} with only the keys the batch needs.
    """
    processor = _processor(hf_dir)
    processor.tokenizer.padding_side = padding_side
    texts, images, videos = [], [], []
    all_images, video = _images(seed), _video(seed)
    for name in names:
        content, num_images, num_videos = SAMPLES[name]
        texts.append(processor.apply_chat_template([{"role": "user", "content": content}],
                                                   add_generation_prompt=True))
        images += [all_images[0 if name == "image_large" else 1]] * num_images
        videos += [video] * num_videos
    media = {}
    if images:
        media["images"] = images
    if videos:
        from transformers.video_utils import VideoMetadata

        frames = VIDEO_SHAPE[0]
        media["videos"] = videos
        media["video_metadata"] = [VideoMetadata(total_num_frames=frames, fps=VIDEO_FPS,
                                                 frames_indices=list(range(frames)))] * len(videos)
    # InternVLProcessor flattens its video frames with torch's flatten: it needs torch tensors back
    tensors = "pt" if type(processor).__name__ == "InternVLProcessor" else "np"
    batch = processor(text=texts, return_tensors=tensors, padding=True, **media)
    inputs = {key: np.asarray(batch[key]) for key in MODEL_INPUTS if key in batch}
    if with_labels:
        inputs["labels"] = np.where(inputs["attention_mask"] == 1, inputs["input_ids"], -100)
    return inputs


@functools.lru_cache(maxsize=2)
def _processor(hf_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(hf_dir)


@functools.lru_cache(maxsize=2)
def _hf_model(hf_dir):
    import torch
    from transformers import AutoModelForImageTextToText
    from transformers.utils import logging

    logging.disable_progress_bar()      # verify's output is one line per input
    original = _original_internvl_weights(hf_dir)
    if original is not None:            # transformers cannot run the remote-code layout: load it renamed
        from transformers import AutoConfig

        from mmx.tiny_internvl import original_to_hf

        config = AutoConfig.from_pretrained(hf_dir)
        config._attn_implementation = "eager"
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
        # save_pretrained's llava names → the module names (transformers' own load-time mapping for internvl)
        renames = (("vision_tower.", "model.vision_tower."), ("multi_modal_projector.", "model.multi_modal_projector."),
                   ("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head."))
        state = {}
        for name, array in original_to_hf(original).items():
            old, new = next((old, new) for old, new in renames if name.startswith(old))
            state[new + name[len(old):]] = torch.from_numpy(array)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or set(missing) - ({"lm_head.weight"} if config.tie_word_embeddings else set()):
            raise ValueError(f"{hf_dir}: original InternVL weights do not fill transformers' model: missing "
                             f"{missing[:4]}, unexpected {unexpected[:4]}")
        if config.tie_word_embeddings:
            model.tie_weights()
        return model.eval()
    model = AutoModelForImageTextToText.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager")
    return model.eval()


def _original_internvl_weights(hf_dir):
    """{name: array} of an InternVL checkpoint in OpenGVLab's original remote-code layout (``vision_model.*``,
    ``mlp1.*``), else None."""
    import glob
    import os

    from safetensors import safe_open
    from safetensors.numpy import load_file

    files = sorted(glob.glob(os.path.join(hf_dir, "*.safetensors")))
    with safe_open(files[0], "np") as f:
        if not any(key.startswith(("vision_model.", "mlp1.")) for key in f.keys()):
            return None
    return {name: array for file in files for name, array in load_file(file).items()}


def _torch_inputs(inputs):
    import torch

    return {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in inputs.items()}


def _mm_token_type_ids(hf_dir, inputs):
    """The processor's modality of each token (0 text, 1 image, 2 video), transformers' input for 3-D RoPE: as the
    processor returned it (5.23's Qwen processors do), else marked the way the processor marks it."""
    if "mm_token_type_ids" in inputs:
        return np.asarray(inputs["mm_token_type_ids"], np.int64)
    config, input_ids = _hf_model(hf_dir).config, inputs["input_ids"]
    video_token_id = getattr(config, "video_token_id", None)      # InternVL: video frames are image tiles
    return np.where(input_ids == config.image_token_id, 1, np.where(input_ids == video_token_id, 2, 0))


def _position_inputs(hf_dir, sub):
    """What transformers' model needs for positions: ``mm_token_type_ids`` (3-D RoPE), or for InternVL (1-D RoPE)
    the ``position_ids`` its generate computes from the attention mask (cumsum - 1, padding at 0)."""
    import torch

    if _hf_model(hf_dir).config.model_type == "internvl":
        mask = np.asarray(sub["attention_mask"], np.int64)
        return {"position_ids": torch.from_numpy(np.where(mask == 1, np.cumsum(mask, -1) - 1, 0))}
    return {"mm_token_type_ids": torch.from_numpy(_mm_token_type_ids(hf_dir, sub))}


def _row_groups(hf_dir, inputs):
    """The batch as the row groups transformers can run: one group, except for GLM (transformers' glm4v puts video
    frames under the image token and checks every image token against the image features,
    ``Glm4vModel.get_placeholder_mask``, so images and videos cannot share a batch there): rows without video,
    then rows with video, each group a sub-batch with the full batch's padding and its own pixels → [(rows, sub)]."""
    types = _mm_token_type_ids(hf_dir, inputs)
    glm = "pixel_values" in inputs and "pixel_values_videos" in inputs and \
        not (inputs["input_ids"] == _hf_model(hf_dir).config.video_token_id).any()
    if not glm:
        return [(np.arange(len(types)), inputs)]
    image_rows, video_rows = (types == 1).any(-1), (types == 2).any(-1)
    if (image_rows & video_rows).any():
        raise ValueError("transformers' GLM-4.1V cannot run a row holding both an image and a video (its video "
                         "frames use the image token); put them in separate rows")
    # images per row: runs of image tokens; videos per row: <|begin_of_video|> tokens
    starts = (types == 1) & (np.pad(types, ((0, 0), (1, 0)))[:, :-1] != 1)
    video_start = _hf_model(hf_dir).config.video_start_token_id
    counts = {"image_grid_thw": starts.sum(-1), "video_grid_thw": (inputs["input_ids"] == video_start).sum(-1)}
    groups = []
    for rows in (np.nonzero(~video_rows)[0], np.nonzero(video_rows)[0]):
        sub = {key: inputs[key][rows] for key in ("input_ids", "attention_mask", "mm_token_type_ids", "labels")
               if key in inputs}
        for pixels_key, grid_key in (("pixel_values", "image_grid_thw"), ("pixel_values_videos", "video_grid_thw")):
            grid = inputs[grid_key]
            owner = np.repeat(np.arange(len(types)), counts[grid_key])             # row of each image / video
            bounds = np.concatenate([[0], np.cumsum(grid.prod(-1))])
            keep = np.nonzero(np.isin(owner, rows))[0]
            if len(keep):
                sub[grid_key] = grid[keep]
                sub[pixels_key] = np.concatenate([inputs[pixels_key][bounds[i]:bounds[i + 1]] for i in keep])
        groups.append((rows, sub))
    return groups


def hf_logits(hf_dir, inputs):
    """Float32 logits (B, S, V) of transformers' model in ``hf_dir`` on ``inputs`` (build_inputs' dict)."""
    import torch

    model = _hf_model(hf_dir)
    logits = None
    for rows, sub in _row_groups(hf_dir, inputs):
        batch = _torch_inputs({k: v for k, v in sub.items() if k not in ("labels", "mm_token_type_ids")})
        batch.update(_position_inputs(hf_dir, sub))
        with torch.no_grad():
            out = model(**batch).logits.float().numpy()
        if logits is None:
            logits = np.zeros((len(inputs["input_ids"]),) + out.shape[1:], np.float32)
        logits[rows] = out
    return logits


def hf_loss_and_grads(hf_dir, inputs):
    """(loss, {HF parameter name: gradient}) of transformers' next-token loss on ``inputs`` (with ``labels``): the
    mean over every supervised next token of the batch (row groups, see :func:`_row_groups`, weighted by their
    supervised tokens)."""
    import torch

    model = _hf_model(hf_dir)
    groups = _row_groups(hf_dir, inputs)
    total = int((inputs["labels"][:, 1:] != -100).sum())
    model.zero_grad()
    loss_value = 0.0
    for _, sub in groups:
        batch = _torch_inputs({k: v for k, v in sub.items() if k != "mm_token_type_ids"})
        batch.update(_position_inputs(hf_dir, sub))
        share = int((sub["labels"][:, 1:] != -100).sum()) / total
        loss = model(**batch).loss * share if len(groups) > 1 else model(**batch).loss
        loss.backward()
        loss_value += float(loss.detach())
    grads = {name: param.grad.float().numpy().copy() for name, param in model.named_parameters()
             if param.grad is not None}
    model.zero_grad()
    return loss_value, grads


def hf_answers(hf_dir, image_paths, question, max_new_tokens=4):
    """transformers' greedy answers (text, special tokens dropped) to ``question`` about each image, one at a time
    (the `mmx demo` check that an exported checkpoint answers the same under transformers)."""
    import torch
    from PIL import Image

    processor, model = _processor(hf_dir), _hf_model(hf_dir)
    answers = []
    for path in image_paths:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(text=[text], images=[Image.open(path).convert("RGB")], return_tensors="pt")
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new_tokens = output[0, inputs["input_ids"].shape[1]:]
        answers.append(processor.tokenizer.decode(new_tokens, skip_special_tokens=True).strip())
    return answers
