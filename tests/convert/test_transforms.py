"""The named transforms and TP split rules against hand-written row orders (docs/checkpoint-layout.md)."""
import ml_dtypes
import numpy as np
import pytest

from mmx.checkpoint.rows import as_array
from mmx.checkpoint.shard import merge, piece_shape, split
from mmx.convert.transforms import make


def rows(labels, width=2):
    """One row per label; row value = label id (so row order is visible), shape (len, width)."""
    return np.repeat(np.array(labels, np.float32)[:, None], width, axis=1)


def order(blocks):
    return as_array(blocks)[:, 0].tolist()


def test_fuse_qkv_groups_query_heads_with_their_kv_head():
    # 4 query heads (ids 0-3), 2 KV heads (k 10-11, v 20-21), head dim 1
    fuse = make("fuse_qkv", num_heads=4, num_kv_heads=2)
    fused = fuse.to_mm([[rows([0, 1, 2, 3])], [rows([10, 11])], [rows([20, 21])]])
    assert order(fused) == [0, 1, 10, 20, 2, 3, 11, 21]
    assert fuse.mm_shape([(4, 2), (2, 2), (2, 2)]) == (8, 2)
    assert [order(part) for part in fuse.to_hf(fused)] == [[0, 1, 2, 3], [10, 11], [20, 21]]
    assert fuse.hf_shapes((8, 2)) == [(4, 2), (2, 2), (2, 2)]


def test_fuse_qkv_head_dim_two_keeps_heads_whole():
    fuse = make("fuse_qkv", num_heads=2, num_kv_heads=1)
    fused = fuse.to_mm([[rows([0, 0.5, 1, 1.5])], [rows([10, 10.5])], [rows([20, 20.5])]])
    assert order(fused) == [0, 0.5, 1, 1.5, 10, 10.5, 20, 20.5]


def test_vision_qkv_interleaves_per_head_and_back():
    interleave = make("interleave_qkv", num_heads=2)
    stacked = rows([0, 1, 10, 11, 20, 21])   # [q0 q1 k0 k1 v0 v1]
    fused = interleave.to_mm([[stacked]])
    assert order(fused) == [0, 10, 20, 1, 11, 21]
    (back,) = interleave.to_hf(fused)
    assert as_array(back).tobytes() == stacked.tobytes()


def test_gate_up_and_tensor_parallel_rules():
    gate_up = make("fuse_gate_up").to_mm([[rows([0, 1, 2, 3])], [rows([10, 11, 12, 13])]])
    assert order(gate_up) == [0, 1, 2, 3, 10, 11, 12, 13]
    pieces = split(gate_up, "gate_up", 2)
    assert [order(piece) for piece in pieces] == [[0, 1, 10, 11], [2, 3, 12, 13]]
    assert order(merge(pieces, "gate_up")) == [0, 1, 2, 3, 10, 11, 12, 13]
    qkv = make("fuse_qkv", num_heads=4, num_kv_heads=2).to_mm([[rows([0, 1, 2, 3])], [rows([10, 11])],
                                                               [rows([20, 21])]])
    assert [order(piece) for piece in split(qkv, "qkv", 2)] == [[0, 1, 10, 20], [2, 3, 11, 21]]


def test_qkv_blocks_rule_keeps_whole_heads_of_each_third():
    """GLM-4.1V's vision qkv keeps HF's [q; k; v] rows (MindSpeed-MM renames it): rank r holds [q_r; k_r; v_r]."""
    stacked = [rows([0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22, 23])]          # 4 heads of dim 1 per third
    pieces = split(stacked, "qkv_blocks", 2)
    assert [order(piece) for piece in pieces] == [[0, 1, 10, 11, 20, 21], [2, 3, 12, 13, 22, 23]]
    assert order(merge(pieces, "qkv_blocks")) == order(stacked)
    assert piece_shape((12, 4), "qkv_blocks", 2) == (6, 4)
    with pytest.raises(ValueError, match=r"dimension 0 of size 12 is not divisible by 24"):
        piece_shape((12, 4), "qkv_blocks", 8)


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_row_split_and_merge_are_byte_exact(dtype):
    weight = np.arange(24, dtype=np.float32).reshape(4, 6).astype(dtype)
    pieces = split([weight], "row", 3)
    assert [as_array(piece).tolist() for piece in pieces][1] == weight[:, 2:4].tolist()
    assert as_array(merge(pieces, "row")).tobytes() == weight.tobytes()
    assert split([weight], "replicate", 2) == [[weight], [weight]]


def test_piece_shape_names_the_tensor_that_does_not_split():
    assert piece_shape((8, 6), "row", 2) == (8, 3)
    assert piece_shape((8, 6), "gate_up", 2) == (4, 6)
    with pytest.raises(ValueError, match=r"tp_size 4 cannot split mlp.linear_fc1.weight \(shape \[6, 2\], rule "
                                         r"'gate_up'\): dimension 0 of size 6 is not divisible by 8"):
        piece_shape((6, 2), "gate_up", 4, "mlp.linear_fc1.weight")
