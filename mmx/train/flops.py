"""FLOPs a training step executes, for MFU (framework-free; the trainer's log and bench/train.py both use it).

Only matrix products are counted (norms, activations, rotary, softmax and the loss are a few FLOPs per element,
left out as in torchtitan and the PaLM / Megatron estimates); a multiply-add is 2 FLOPs. Per matmul weight W of
``n`` elements applied to ``u`` rows: forward ``2 n u``; backward ``2 n u`` for the weight gradient when W trains
and ``2 n u`` for the input gradient when anything upstream of W trains (a frozen vision tower with nothing before
it that trains runs forward only). What ``u`` is depends on where W sits (docs/performance.md has the table):

- vision tower: patch embedding and blocks per **patch** (``pixel_values`` rows), the projector / merger, GLM's
  downsample and Qwen3-VL's deepstack mergers per **merged** patch (patches / merge²); position tables are lookups;
- LLM: every decoder-layer weight per **executed** position (B × S, padding included: it is computed); a MoE layer's
  stacked experts per position × top-k / E (the **active** experts only), its router per position; the embedding
  lookup is 0;
- output layer (or the tied embedding) per **computed** position: the trainer's ``logits_positions`` (the supervised
  targets), else B × S;
- attention's quadratic term, per layer and sequence of length L: ``4 L² H d`` forward (QKᵀ and PV over the whole
  L × L square, causal or not, as torchtitan counts it: ``12 L H d`` per token for forward + backward), backward
  ``8 L² H d`` when anything at or before the layer's qkv trains. Sequences: a packed row's samples (``cu_seqlens``),
  a padded row whole (S); vision: each frame, or each window in Qwen2.5-VL's windowed blocks.

MFU = executed FLOPs of the step ÷ (step seconds × peak FLOP/s), the peak of the dtype the matmuls run in
(:func:`peak_flops`).
"""
import re

import numpy as np

from mmx.models.common.positions import vision_cu_seqlens, vision_window_index

# Dense peak TFLOP/s per device by (name fragment, dtype) from the vendors' data sheets (no sparsity). Matched in
# order against the device name the backend reports (lower case); the first hit wins.
KNOWN_PEAK_TFLOPS = (
    ("h200", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    ("h100 pcie", {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0}),
    ("h100", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    ("h800", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    ("h20", {"bf16": 148.0, "fp16": 148.0, "fp32": 44.0}),
    ("a100", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    ("a800", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    ("l40s", {"bf16": 362.0, "fp16": 362.0, "fp32": 91.6}),
    ("ascend910b1", {"bf16": 400.0, "fp16": 400.0}),
    ("ascend910b2", {"bf16": 376.0, "fp16": 376.0}),
    ("ascend910b3", {"bf16": 313.0, "fp16": 313.0}),
    ("ascend910b4", {"bf16": 280.0, "fp16": 280.0}),
)


def known_peak_flops(device_name, dtype):
    """The data-sheet peak FLOP/s of ``device_name`` (e.g. ``"NVIDIA H200"``, ``"Ascend910B2"``) in ``dtype``
    ("bf16" | "fp16" | "fp32"), or None when the table does not know it (CPUs: measure)."""
    name = re.sub(r"\s+", " ", str(device_name or "")).lower()
    for fragment, peaks in KNOWN_PEAK_TFLOPS:
        if fragment in name.replace("-", " ") or fragment in name.replace(" ", ""):
            return peaks[dtype] * 1e12 if dtype in peaks else None
    return None


def peak_flops(peak_tflops, device_name, dtype, measure):
    """(peak FLOP/s of one device, where it came from): ``training.peak_tflops`` when set, else the table's for a
    known accelerator, else ``measure()`` (a large matmul on this device, mmx.train.metrics.measure_matmul_peak)."""
    if peak_tflops:
        return float(peak_tflops) * 1e12, "training.peak_tflops"
    known = known_peak_flops(device_name, dtype)
    if known:
        return known, f"data sheet of {device_name} ({dtype})"
    return float(measure()), f"measured {dtype} matmul"


_LOOKUPS = ("word_embeddings.weight", "pos_embed.weight", "position_embedding.weight")


def _unit(name):
    """What one row of the matmul weight ``name`` is applied to: "patch", "merged", "token", "output" or None
    (not a matmul: a lookup table)."""
    if name.endswith(_LOOKUPS):
        return None
    if name.startswith("image_encoder."):
        per_patch = name.startswith(("image_encoder.encoder.patch_embed.", "image_encoder.encoder.blocks.layers."))
        return "patch" if per_patch and ".deepstack_layer." not in name else "merged"
    if name.startswith("text_decoder.output_layer."):
        return "output"
    return "token"


def _stage(name):
    """Execution order of the parts: the vision tower's per-patch parts (and its position tables), its merged parts
    (which read the last block's output), then the LLM."""
    if not name.startswith("image_encoder."):
        return 2
    return 1 if _unit(name) == "merged" else 0


class StepFlops:
    """Counts a model's executed FLOPs per micro-batch: ``StepFlops(config, shapes, trainable)`` with the
    ModelConfig, ``[(name, shape)]`` of every parameter in state-dict order and the names that train.

    A model without a ModelConfig (``config`` None) counts every matrix weight per position, and no attention term.
    """

    def __init__(self, config, shapes, trainable):
        self.config = config
        self.tied = not any(name.startswith("text_decoder.output_layer.") for name, _ in shapes)
        trainable, names = set(trainable), {name for name, _ in shapes}
        ordered = sorted(enumerate(shapes), key=lambda item: (_stage(item[1][0]), item[0]))
        self.matmuls = []     # (unit, elements applied per row, weight trains, input gradient needed)
        self.attention = []   # ("vision" | "text", block / layer index, backward needed)
        upstream = False      # anything trained so far in execution order
        for _, (name, shape) in ordered:
            unit, trains = _unit(name), name in trainable
            if unit and len(shape) >= 2:
                elements = int(np.prod(shape))
                if re.search(r"mlp\.experts\.linear_fc[12]\.weight$", name):   # stacked (E, ., .): top-k active
                    elements = elements * config.text.num_experts_per_tok // config.text.num_experts
                self.matmuls.append((unit, elements, trains, upstream))
            upstream = upstream or trains
            qkv = re.search(r"layers\.(\d+)\.self_attention\.(linear_)?qkv\.(weight|bias)$", name)
            if qkv and (name.endswith("bias") or name[:-len("weight")] + "bias" not in names):
                # the attention core runs right after the qkv projection (after its bias, when it has one)
                kind = "vision" if name.startswith("image_encoder.") else "text"
                self.attention.append((kind, int(qkv.group(1)), upstream))
        if self.tied:   # the output layer is the embedding matrix, applied after everything else
            name = "text_decoder.embedding.word_embeddings.weight"
            shape = dict(shapes).get(name)
            if shape is not None:
                self.matmuls.append(("output", int(np.prod(shape)), name in trainable, upstream))

    def micro_batch(self, input_ids_shape, computed_positions=None, cu_seqlens=None, image_grid_thw=None,
                    video_grid_thw=None):
        """Executed FLOPs (float) of forward + backward on one micro-batch: ``input_ids`` (B, S), the number of
        positions the output layer computes (None: all B × S), a packed row's ``cu_seqlens``, the grids."""
        rows, length = (int(d) for d in input_ids_shape)
        grids = [np.asarray(g, np.int64).reshape(-1, 3) for g in (image_grid_thw, video_grid_thw) if g is not None]
        grid = np.concatenate(grids) if grids else np.zeros((0, 3), np.int64)
        patches = int(np.prod(grid, axis=1).sum()) if len(grid) else 0
        merge = self.config.vision.spatial_merge_size if self.config is not None else 1
        units = {"patch": patches, "merged": patches // merge ** 2, "token": rows * length,
                 "output": rows * length if computed_positions is None else int(computed_positions)}
        total = 0.0
        for unit, elements, trains, upstream in self.matmuls:
            total += 2.0 * elements * units[unit] * (1 + trains + upstream)
        if self.config is None:
            return total
        text, vision = self.config.text, self.config.vision
        if cu_seqlens is not None:
            bounds = np.asarray(cu_seqlens, np.int64)
            text_squares = float(np.sum(np.diff(bounds) ** 2))
        else:
            text_squares = float(rows * length ** 2)
        frame_squares = window_squares = 0.0
        if patches:
            frame_squares = float(np.sum(np.diff(vision_cu_seqlens(grid).astype(np.int64)) ** 2))
            if vision.window_size:
                _, windows = vision_window_index(grid, merge, vision.window_size, vision.patch_size)
                window_squares = float(np.sum(np.diff(windows.astype(np.int64)) ** 2))
        for kind, index, backward in self.attention:
            if kind == "text":
                squares, width = text_squares, text.num_heads * text.head_dim
            else:
                windowed = vision.window_size and index not in vision.fullatt_block_indexes
                squares, width = (window_squares if windowed else frame_squares), vision.hidden_size
            total += 4.0 * squares * width * (3 if backward else 1)
        return total


def step_flops(counter, micro_batches):
    """Executed FLOPs of a step: the sum of ``counter.micro_batch`` over ``micro_batches``, each the model's inputs
    as the trainer prepares them (``input_ids`` with a shape, ``logits_positions``, ``cu_seqlens``, the grids)."""
    total = 0.0
    for inputs in micro_batches:
        positions = inputs.get("logits_positions")
        total += counter.micro_batch(tuple(inputs["input_ids"].shape),
                                     None if positions is None else len(positions), inputs.get("cu_seqlens"),
                                     inputs.get("image_grid_thw"), inputs.get("video_grid_thw"))
    return total
