"""Shape and indexing ops against numpy: values, gradients (they route gradients exactly), integer semantics."""
import numpy as np
import pytest

from mmx import ops
from ops_harness import DTYPES, check_op, random

X = (2, 3, 4)
INDEX = np.array([[0, 2, 2, 1], [1, 1, 0, 0]])                                  # for gather/scatter along dim 1
SCATTER_INDEX = np.array([[2, 0, 1], [1, 2, 0]])                                # a permutation per row: no collisions


def _scatter_reference(x, src):
    out = x.copy()
    for i in range(SCATTER_INDEX.shape[0]):
        for j in range(SCATTER_INDEX.shape[1]):
            out[i, SCATTER_INDEX[i, j]] = src[i, j]
    return out


MASK = np.array([[True, False, True], [False, False, True]])


def _masked_scatter_reference(x, src):
    out = x.copy()
    out[MASK] = src.reshape(-1, x.shape[-1])[:MASK.sum()]                    # rows of src fill masked rows in order
    return out


def _t(array):
    return ops.tensor(array)


SHAPE_OPS = [
    ("reshape", [X], lambda x: ops.reshape(x, (4, -1)), lambda x: x.reshape(4, -1)),
    ("transpose", [X], lambda x: ops.transpose(x, 0, 2), lambda x: np.swapaxes(x, 0, 2)),
    ("permute", [X], lambda x: ops.permute(x, (2, 0, 1)), lambda x: x.transpose(2, 0, 1)),
    ("unsqueeze", [X], lambda x: ops.unsqueeze(x, 1), lambda x: x[:, None]),
    ("squeeze", [(2, 1, 4)], lambda x: ops.squeeze(x, 1), lambda x: x[:, 0]),
    ("expand", [(2, 1, 4)], lambda x: ops.expand(x, (2, 3, -1)), lambda x: np.broadcast_to(x, (2, 3, 4))),
    ("repeat_interleave", [X], lambda x: ops.repeat_interleave(x, 2, 1), lambda x: np.repeat(x, 2, axis=1)),
    ("cat", [X, (2, 1, 4)], lambda a, b: ops.cat([a, b], 1), lambda a, b: np.concatenate([a, b], 1)),
    ("stack", [X, X], lambda a, b: ops.stack([a, b], 1), lambda a, b: np.stack([a, b], 1)),
    ("split_then_cat", [X], lambda x: ops.cat(ops.split(x, [1, 3], 2)[::-1], 2),
     lambda x: np.concatenate([x[..., 1:], x[..., :1]], 2)),
    ("split_pieces", [X], lambda x: ops.split(x, [2, 1], 1)[0] * 2.0 + ops.split(x, [2, 1], 1)[1],
     lambda x: x[:, :2] * 2.0 + x[:, 2:]),
    ("slicing", [X], lambda x: x[1:, ::2, -1], lambda x: x[1:, ::2, -1]),
    ("gather", [(2, 3)], lambda x: ops.gather(x, 1, _t(INDEX)), lambda x: np.take_along_axis(x, INDEX, 1)),
    ("index_select", [X], lambda x: ops.index_select(x, 1, _t(np.array([2, 0, 2]))), lambda x: x[:, [2, 0, 2]]),
    ("scatter", [(2, 3), (2, 3)], lambda x, s: ops.scatter(x, 1, _t(SCATTER_INDEX), s), _scatter_reference),
    ("masked_scatter", [(2, 3, 4), (3, 4)], lambda x, s: ops.masked_scatter(x, ops.unsqueeze(_t(MASK), -1), s),
     _masked_scatter_reference),
    ("where", [X, X], lambda a, b: ops.where(_t(np.arange(24).reshape(X) % 3 == 0), a, b),
     lambda a, b: np.where(np.arange(24).reshape(X) % 3 == 0, a, b)),
    ("where_scalar", [X], lambda a: ops.where(_t(np.arange(24).reshape(X) % 2 == 0), a, 0.0),
     lambda a: np.where(np.arange(24).reshape(X) % 2 == 0, a, 0.0)),
    ("tril", [(2, 4, 4)], lambda x: ops.tril(x), lambda x: np.tril(x)),
    ("tril_diagonal", [(4, 5)], lambda x: ops.tril(x, -1), lambda x: np.tril(x, -1)),
    ("topk_values", [(3, 6)], lambda x: ops.topk(x, 2)[0], lambda x: -np.sort(-x, axis=-1)[:, :2]),
    ("topk_dim0", [(5, 3)], lambda x: ops.topk(x, 2, dim=0)[0], lambda x: -np.sort(-x, axis=0)[:2]),
    ("cumsum", [X], lambda x: ops.cumsum(x, 1), lambda x: np.cumsum(x, 1)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,shapes,backend_fn,reference_fn", SHAPE_OPS, ids=[s[0] for s in SHAPE_OPS])
def test_shape_op(name, shapes, backend_fn, reference_fn, dtype):
    arrays = [random(shape, seed) for seed, shape in enumerate(shapes)]
    check_op(backend_fn, reference_fn, arrays, dtype)


def test_integer_semantics():
    x = ops.tensor(np.array([[1.0, 5.0, 5.0, 2.0], [7.0, 0.0, 7.0, 7.0]], dtype=np.float32))
    values, indices = ops.topk(x, 3)
    np.testing.assert_array_equal(ops.to_numpy(values), [[5, 5, 2], [7, 7, 7]])
    assert indices.dtype == ops.int64
    assert sorted(ops.to_numpy(indices)[0][:2].tolist()) == [1, 2]
    argmax = ops.argmax(x, 1)
    assert argmax.dtype == ops.int64
    np.testing.assert_array_equal(ops.to_numpy(argmax), [1, 0])                # the first maximum on ties
    np.testing.assert_array_equal(ops.to_numpy(ops.argmax(x, 0)), [1, 0, 1, 1])
    seqlens = ops.tensor(np.array([0, 3, 2, 4], dtype=np.int32))
    cu_seqlens = ops.cumsum(seqlens, 0)
    assert cu_seqlens.dtype == ops.int32                                        # cu_seqlens stay int32
    np.testing.assert_array_equal(ops.to_numpy(cu_seqlens), [0, 3, 5, 9])
    causal = ops.tril(ops.ones((3, 3), ops.bool_))
    assert causal.dtype == ops.bool_
    np.testing.assert_array_equal(ops.to_numpy(causal), np.tril(np.ones((3, 3), bool)))
    ids = ops.tensor(np.array([[3, 1], [2, 2]]))
    np.testing.assert_array_equal(ops.to_numpy(ops.gather(ops.reshape(ops.arange(8), (2, 4)), 1, ids)),
                                  [[3, 1], [6, 6]])


def test_integer_indexing_ops_keep_integers():
    ids = ops.reshape(ops.arange(12), (3, 4))
    assert ops.index_select(ids, 0, ops.tensor(np.array([2, 0]))).dtype == ops.int64
    np.testing.assert_array_equal(ops.to_numpy(ops.repeat_interleave(ids, 2, 0))[:, 0], [0, 0, 4, 4, 8, 8])
    np.testing.assert_array_equal(ops.to_numpy(ops.where(ids > 5, ids, 0)).sum(), 6 + 7 + 8 + 9 + 10 + 11)
    split = ops.split(ids, [1, 2], 0)
    assert [tuple(piece.shape) for piece in split] == [(1, 4), (2, 4)]


def test_masked_scatter_with_too_few_source_rows_is_an_error():
    x = ops.zeros((2, 3, 4))
    mask = ops.unsqueeze(ops.tensor(MASK), -1)
    with pytest.raises(Exception):
        ops.masked_scatter(x, mask, ops.ones((2, 4)))                           # mask selects 3 rows, src has 2
