"""The Qwen-VL conditional-generation model around a family's vision encoder (GLM-4.1V uses it too).

Mirrors ``Qwen2VLForConditionalGeneration.forward`` / ``Qwen2_5_VLForConditionalGeneration.forward`` /
``Qwen3VLForConditionalGeneration.forward`` / ``Glm4vForConditionalGeneration.forward`` (and their
``Model.forward``) in transformers::

    forward(input_ids (B, S), ...)
    ├── text_decoder.embed(input_ids)                          (B, S, C)
    ├── image_encoder(pixel_values, image_grid_thw)            (N_image_tokens, C) → masked_scatter at <|image_pad|>
    ├── image_encoder(pixel_values_videos, video_grid_thw)     (N_video_tokens, C) → masked_scatter at <|video_pad|>
    │                                                          (GLM: at the <|image|> tokens inside video spans)
    │                                                          (+ Qwen3-VL deepstack levels, scattered the same way)
    ├── 3-D position ids (host, numpy: positions.rope_index, or the cache's next positions when decoding)
    ├── text_decoder.rotary(position_ids)                      cos/sin (B, S, D)
    └── text_decoder(hidden, cos, sin, mask, deepstack)        float32 logits (B, S, V)

A family subclass names its vision encoder class in ``image_encoder_class`` (built as ``cls(vision, stage)``); the
encoder returns ``(features, deepstack levels)``, the levels empty for families without deepstack.
"""
import numpy as np

from mmx import nn, ops
from mmx.parallel import Stage
from mmx.models.common.moe import load_balancing_loss
from mmx.models.common.positions import IMAGE, VIDEO, rope_index, token_types
from mmx.models.common.text import TextDecoder


def _host(x, dtype=None):
    """A numpy copy of integer metadata given as numpy, a list or a backend tensor (None stays None)."""
    if x is None:
        return None
    array = x if isinstance(x, (np.ndarray, list, tuple)) else ops.to_numpy(x)
    return np.asarray(array, dtype)


def _device(x, dtype):
    """A backend tensor of ``x`` (numpy or already a backend tensor) in ``dtype``."""
    return ops.tensor(np.asarray(x), dtype) if isinstance(x, (np.ndarray, list, tuple)) else ops.cast(x, dtype)


class QwenVLModel(nn.Module):
    """Image encoder + Qwen2 LLM; state-dict keys are the mm names (``image_encoder.*``, ``text_decoder.*``).

    ``stage`` (mmx.parallel.Stage, default the whole model) selects the vision blocks, LLM layers and ends this
    model holds; ``forward`` runs the whole model only.
    """

    image_encoder_class = None
    # Inputs read on the host (token types, 3-D positions, masks): the trainer passes them as numpy
    # (mmx.train.loop.model_inputs), so no device -> host read happens per micro-batch.
    host_inputs = ("input_ids", "attention_mask", "position_ids", "mm_token_type_ids")

    def __init__(self, config, stage=None):
        super().__init__()
        self.config = config
        self.stage = stage or Stage.full(config.vision.depth, config.text.num_layers)
        if self.stage.first or self.stage.vision_layers:
            self.image_encoder = self.image_encoder_class(config.vision, self.stage)
        self.text_decoder = TextDecoder(config.text, self.stage.llm_layers, self.stage.first, self.stage.last)

    def forward(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None,
                pixel_values_videos=None, video_grid_thw=None, second_per_grid_ts=None, position_ids=None,
                cache=None, cu_seqlens=None, logits_to_keep=0, logits_positions=None, mm_token_type_ids=None,
                return_aux_loss=False, loss_targets=None, loss_weights=None):
        """Float32 logits (B, S, V), or (B, K, V) of the last ``logits_to_keep`` = K positions (0 keeps all), or
        (N, V) of ``logits_positions`` (N,) numpy int, flat indices into B × S (the trainer passes the supervised
        ones, so no logits are computed where no loss is taken).

        input_ids (B, S) int; attention_mask (B, S_past + S), 1 = real token (left or right padding);
        pixel_values (N_patches, C*kT*kH*kW) and image_grid_thw (N_images, 3) as the processor returns them;
        pixel_values_videos / video_grid_thw likewise; second_per_grid_ts (N_videos,) (Qwen2.5-VL);
        position_ids (3, B, S) to override the computed 3-D positions; cache: a KVCache (prefill when empty, then
        decode steps); cu_seqlens (N+1,) int: a packed row (B = 1) of N samples that attend only to themselves and
        whose positions each start at 0. During a cached decode step, placeholder ids the model generated are plain
        tokens (no pixels belong to them), as in transformers. mm_token_type_ids (B, S) (transformers 5.23
        processors; 0 text, 1 image, 2 video): the modality runs the 3-D positions follow (default: the
        placeholder ids, which is what the processors mark). ``return_aux_loss`` (MoE models): return
        ``(logits, load-balancing loss)``, the loss transformers 5.23 adds (times ``router_aux_loss_coef``) when the
        config asks for router logits, computed over the real tokens of ``attention_mask``. ``loss_targets`` /
        ``loss_weights`` (training: tensors aligned with ``logits_positions``, or (B, S)): the scalar weighted cross
        entropy sum instead of the logits (TextDecoder.forward: chunked, no logits kept).
        """
        full = Stage.full(self.config.vision.depth, self.config.text.num_layers)
        if self.stage != full:
            raise ValueError(f"forward runs the whole model; this one holds only pipeline stage {self.stage} "
                             f"(build it without a stage, or run stages through the trainer's pipeline)")
        if cu_seqlens is not None and cache is not None:
            raise ValueError("packed inputs (cu_seqlens) are for training; pass either cu_seqlens or a cache")
        ids = _host(input_ids, np.int64)
        mask = _host(attention_mask, np.int64)
        hidden = self.text_decoder.embed(ops.tensor(ids))
        decoding = cache is not None and cache.length > 0
        # Placeholders by modality, from the ids as transformers finds them (GLM: video frames are image tokens
        # inside <|begin_of_video|> ... <|end_of_video|>).
        types = token_types(ids, self.config)
        video_id = self.config.image_token_id if self.config.video_span_token_ids else self.config.video_token_id
        hidden, deepstack = self._insert(hidden, (), types == IMAGE, pixel_values, image_grid_thw,
                                         self.config.image_token_id, "image", decoding)
        hidden, deepstack = self._insert(hidden, deepstack, types == VIDEO, pixel_values_videos, video_grid_thw,
                                         video_id, "video", decoding)
        positions = self._positions(ids, mask, image_grid_thw, video_grid_thw, second_per_grid_ts, position_ids,
                                    cache, cu_seqlens, mm_token_type_ids)
        cos, sin = self.text_decoder.rotary(positions)
        key_mask = None if mask is None or mask.all() else ops.tensor(mask.astype(bool))
        # numpy: ops.attention reads the bounds from it, no device -> host read in each layer
        packed = None if cu_seqlens is None else np.asarray(_host(cu_seqlens), np.int32)
        router_logits = [] if return_aux_loss else None
        logits = self.text_decoder(hidden, cos, sin, key_mask, packed, cache, logits_to_keep, logits_positions,
                                   deepstack, router_logits, loss_targets, loss_weights)
        if not return_aux_loss:
            return logits
        text = self.config.text
        return logits, load_balancing_loss(router_logits, text.num_experts, text.num_experts_per_tok, mask)

    def _insert(self, hidden, deepstack, slots, pixels, grid_thw, token_id, kind, decoding=False):
        """Replace the placeholder embeddings at ``slots`` ((B, S) bool numpy: the ``token_id`` tokens of this
        modality) by the vision features of ``pixels`` and scatter the encoder's deepstack levels to the same
        positions of ``deepstack`` ((B, S, C) per level; () before the first modality) → (hidden, deepstack)."""
        if pixels is None:
            if slots.any() and self.stage.first and not decoding:
                raise ValueError(f"input_ids hold {int(slots.sum())} {kind} placeholder tokens (id {token_id}) but "
                                 f"no {'pixel_values' if kind == 'image' else 'pixel_values_videos'} were given")
            return hidden, deepstack
        if grid_thw is None:
            raise ValueError(f"{kind} pixels given without {kind}_grid_thw: pass the grid the processor returned")
        features, levels = self.image_encoder(_device(pixels, ops.float32), _host(grid_thw, np.int64))
        if features.shape[0] != int(slots.sum()):
            raise ValueError(f"{kind.capitalize()} features and {kind} tokens do not match: input_ids hold "
                             f"{int(slots.sum())} {kind} tokens (id {token_id}) but the {kind}s give "
                             f"{features.shape[0]} features; build input_ids with the checkpoint's processor")
        # masked_scatter as a gather with a host-built index (the counts are checked above, on the host): row i of
        # the result is the feature row for the k-th slot, else the embedding row i; no device -> host read.
        rows = int(np.prod(slots.shape))
        index = np.arange(rows, dtype=np.int64)
        index[np.flatnonzero(slots)] = rows + np.arange(features.shape[0], dtype=np.int64)
        index = ops.tensor(index)

        def scattered(base, values):
            flat = ops.reshape(base, (rows, base.shape[-1]))
            both = ops.cat([flat, ops.cast(values, base.dtype)], 0)
            return ops.reshape(ops.index_select(both, 0, index), tuple(base.shape))

        bases = deepstack or [ops.zeros_like(hidden)] * len(levels)
        deepstack = [scattered(base, level) for base, level in zip(bases, levels)]
        return scattered(hidden, features), deepstack

    def _positions(self, ids, mask, image_grid_thw, video_grid_thw, second_per_grid_ts, position_ids, cache,
                   cu_seqlens, mm_token_type_ids=None):
        """(3, B, S) numpy positions; records the cache's next positions on prefill."""
        length = ids.shape[1]
        if position_ids is not None:
            positions = _host(position_ids, np.int64)
            positions = np.broadcast_to(positions, (3,) + positions.shape) if positions.ndim == 2 else positions
            if cache is not None:
                cache.next_position = positions.max(axis=(0, 2)) + 1
            return positions
        if cache is not None and cache.length > 0:
            return cache.decode_positions(length)
        current_mask = None if mask is None else mask[:, -length:]
        positions, next_position = rope_index(ids, current_mask, _host(image_grid_thw), _host(video_grid_thw),
                                              self.config, _host(second_per_grid_ts, np.float32),
                                              _host(cu_seqlens), _host(mm_token_type_ids, np.int64))
        if cache is not None:
            cache.next_position = next_position[:, 0]
        return positions
