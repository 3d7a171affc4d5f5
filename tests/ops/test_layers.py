"""Layer ops (linear, matmul, embedding, norms, rotary, cross entropy) against numpy, forward and backward."""
import numpy as np
import pytest

import ops_reference as ref
import tolerances
from mmx import ops
from ops_harness import DTYPES, as_float64, check_op, error, random


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_with_and_without_bias(dtype):
    x, weight, bias = random((2, 3, 5), 1), random((4, 5), 2), random((4,), 3)
    check_op(ops.linear, ref.linear, [x, weight, bias], dtype)
    check_op(lambda a, w: ops.linear(a, w), ref.linear, [x, weight], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_batched_and_broadcast(dtype):
    check_op(ops.matmul, np.matmul, [random((2, 3, 4), 1), random((2, 4, 5), 2)], dtype)
    check_op(ops.matmul, np.matmul, [random((2, 3, 4), 3), random((4, 5), 4)], dtype)
    check_op(lambda a, b: a @ b, np.matmul, [random((3, 4), 5), random((4, 2), 6)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_accumulates_repeated_ids(dtype):
    ids = np.array([[1, 4, 1], [0, 4, 4]])
    ids_tensor = ops.tensor(ids)
    check_op(lambda w: ops.embedding(ids_tensor, w), lambda w: w[ids], [random((6, 5), 1)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm(dtype):
    check_op(lambda x, w: ops.rms_norm(x, w, 1e-6), lambda x, w: ref.rms_norm(x, w, 1e-6),
             [random((2, 3, 16), 1), random((16,), 2, 0.5, 1.5)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm(dtype):
    check_op(lambda x, w, b: ops.layer_norm(x, w, b, 1e-6), lambda x, w, b: ref.layer_norm(x, w, b, 1e-6),
             [random((2, 3, 16), 1), random((16,), 2, 0.5, 1.5), random((16,), 3)], dtype)


def _cos_sin_backend(position_ids, mrope_section=None, interleaved=False):
    def fn(inv_freq):
        return ops.cat(list(ops.rotary_cos_sin(ops.tensor(position_ids), inv_freq, mrope_section, interleaved)), -1)

    def reference(inv_freq):
        return np.concatenate(ref.rotary_cos_sin(position_ids, inv_freq, mrope_section, interleaved), -1)
    return fn, reference


INV_FREQ = 1.0 / (10000.0 ** (np.arange(0, 8, 2) / 8))                        # head dim 8 → 4 frequencies


def test_rotary_cos_sin_1d():
    position_ids = np.array([[0, 1, 2, 3, 40], [5, 6, 7, 8, 9]])
    fn, reference = _cos_sin_backend(position_ids)
    check_op(fn, reference, [INV_FREQ], "float32", grad=False)
    cos, sin = ops.rotary_cos_sin(ops.tensor(position_ids), ops.tensor(INV_FREQ.astype(np.float32)))
    assert cos.dtype == ops.float32 and tuple(cos.shape) == (2, 5, 8) and tuple(sin.shape) == (2, 5, 8)


def test_rotary_cos_sin_multimodal_sections():
    rng = np.random.default_rng(0)
    position_ids = rng.integers(0, 30, size=(3, 2, 5))                       # temporal, height, width rows
    fn, reference = _cos_sin_backend(position_ids, [1, 1, 2])
    check_op(fn, reference, [INV_FREQ], "float32", grad=False)
    # each band really reads its own row: the temporal band (frequency 0) ignores height/width rows
    cos = ops.to_numpy(ops.rotary_cos_sin(ops.tensor(position_ids), ops.tensor(INV_FREQ.astype(np.float32)),
                                          [1, 1, 2])[0])
    np.testing.assert_allclose(cos[..., 0], np.cos(position_ids[0] * INV_FREQ[0]), atol=1e-6)
    np.testing.assert_allclose(cos[..., 3], np.cos(position_ids[2] * INV_FREQ[3]), atol=1e-6)


def test_rotary_cos_sin_interleaved_sections():
    """Qwen3-VL's interleave with sections [24, 20, 20] scaled to 16 frequencies ([6, 5, 5]): T H W T H W ... T."""
    rng = np.random.default_rng(1)
    position_ids = rng.integers(0, 30, size=(3, 2, 5))
    inv_freq = 1.0 / (5e6 ** (np.arange(0, 32, 2) / 32))
    fn, reference = _cos_sin_backend(position_ids, [6, 5, 5], interleaved=True)
    check_op(fn, reference, [inv_freq], "float32", grad=False)
    cos = ops.to_numpy(ops.rotary_cos_sin(ops.tensor(position_ids), ops.tensor(inv_freq.astype(np.float32)),
                                          [6, 5, 5], True)[0])
    for slot, row in ((0, 0), (1, 1), (2, 2), (13, 1), (14, 2), (15, 0)):
        np.testing.assert_allclose(cos[..., slot], np.cos(position_ids[row] * inv_freq[slot]), atol=1e-6)


@pytest.mark.parametrize("layout", ["dense", "varlen"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_apply_rotary(layout, dtype):
    position_ids = np.arange(10).reshape(2, 5) if layout == "dense" else np.array([0, 1, 2, 0, 1, 2, 3])
    cos, sin = ref.rotary_cos_sin(position_ids, INV_FREQ)
    cos_tensor, sin_tensor = (ops.tensor(t.astype(np.float32)) for t in (cos, sin))
    x_shape = (2, 5, 3, 8) if layout == "dense" else (7, 3, 8)
    check_op(lambda x: ops.apply_rotary(x, cos_tensor, sin_tensor),
             lambda x: ref.apply_rotary(x, cos.astype(np.float32), sin.astype(np.float32)),
             [random(x_shape, 1)], dtype)


def test_rotary_cos_sin_gptj_pairs():
    """GLM-4.1V: contiguous sections, each frequency's angle twice in place (HF ``repeat_interleave(2)``)."""
    rng = np.random.default_rng(2)
    position_ids = rng.integers(0, 30, size=(3, 2, 5))
    gptj = (lambda f: ops.cat(list(ops.rotary_cos_sin(ops.tensor(position_ids), f, [1, 1, 2],
                                                      rotary_interleaved=True)), -1),
            lambda f: np.concatenate(ref.rotary_cos_sin(position_ids, f, [1, 1, 2], rotary_interleaved=True), -1))
    check_op(*gptj, [INV_FREQ], "float32", grad=False)
    cos = ops.to_numpy(ops.rotary_cos_sin(ops.tensor(position_ids), ops.tensor(INV_FREQ.astype(np.float32)),
                                          [1, 1, 2], rotary_interleaved=True)[0])
    for slot, (row, freq) in enumerate([(0, 0), (0, 0), (1, 1), (1, 1), (2, 2), (2, 2), (2, 3), (2, 3)]):
        np.testing.assert_allclose(cos[..., slot], np.cos(position_ids[row] * INV_FREQ[freq]), atol=1e-6)


@pytest.mark.parametrize("pairs", ["half", "gptj"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_apply_rotary_partial(pairs, dtype):
    """Partial rotary (GLM's partial_rotary_factor 0.5): cos/sin of 8 dims on heads of 16, so dims 8..15 pass
    through; with GPT-J pairs (x0, x1), (x2, x3), ... rotate (HF rotate_half_llm)."""
    interleaved = pairs == "gptj"
    position_ids = np.arange(10).reshape(2, 5)
    cos, sin = ref.rotary_cos_sin(position_ids, INV_FREQ, rotary_interleaved=interleaved)
    cos_tensor, sin_tensor = (ops.tensor(t.astype(np.float32)) for t in (cos, sin))
    check_op(lambda x: ops.apply_rotary(x, cos_tensor, sin_tensor, rotary_interleaved=interleaved),
             lambda x: ref.apply_rotary(x, cos.astype(np.float32), sin.astype(np.float32), interleaved),
             [random((2, 5, 3, 16), 1)], dtype)
    x = random((2, 5, 3, 16), 2).astype(np.float32)
    out = ops.to_numpy(ops.apply_rotary(ops.tensor(x), cos_tensor, sin_tensor, rotary_interleaved=interleaved))
    assert (out[..., 8:] == x[..., 8:]).all()                      # the pass-through half is untouched
    if interleaved:   # pair (0, 1) at angle p * f0: a plain 2-D rotation
        angle = position_ids[..., None] * INV_FREQ[0]
        np.testing.assert_allclose(out[..., 1], x[..., 0] * np.sin(angle) + x[..., 1] * np.cos(angle), atol=1e-5)


LABELS = np.array([3, -100, 0, 9, 3, -100])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_ignores_masked_labels(reduction, dtype):
    labels = ops.tensor(LABELS)
    check_op(lambda logits: ops.cross_entropy(logits, labels, -100, reduction),
             lambda logits: ref.cross_entropy(logits, LABELS, -100, reduction),
             [random((6, 10), 1) * 3], dtype, out_dtype="float32")


def test_cross_entropy_mean_is_zero_when_everything_is_ignored():
    logits = ops.tensor(random((3, 5), 1).astype(np.float32))
    loss = ops.cross_entropy(logits, ops.tensor(np.array([-100, -100, -100])))
    assert float(ops.to_numpy(loss)) == 0.0
    other = ops.cross_entropy(logits, ops.tensor(np.array([7, 7, 1])), ignore_index=7)
    assert error(as_float64(other), ref.cross_entropy(ops.to_numpy(logits).astype(np.float64),
                                                      np.array([7, 7, 1]), 7)) <= tolerances.FORWARD["float32"]
