"""A Loop-free ONNX translation of ``aten.embedding_bag``: one Gather, then one reduction per bag.

torchlib translates ``EmbeddingBag`` to an ONNX ``Loop`` over the bags, which ONNX Runtime runs one
iteration at a time. Here every index is assigned its bag in O(N) (a scatter of bag starts, then a
cumulative sum) and the gathered rows are pooled with one ``ScatterND`` reduction; bags of a fixed
length (a 2-D input to ``nn.EmbeddingBag``) are pooled with a plain ``Reduce*`` over a reshape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import onnx_ir as ir
from onnxscript import opset18

__all__ = ["embedding_bag", "embedding_bag_table"]

# NOTE: inside a translation the exporter traces: ops take and return `ir.Value`s, while the opset's
# stubs describe script-mode tensor types. Calling the ops untyped is more honest than casting each one.
op: Any = opset18

_SUM, _MEAN, _MAX = 0, 1, 2
_NATIVE = (ir.DataType.FLOAT, ir.DataType.DOUBLE)
"""Weight dtypes pooled as they are; others (fp16, bf16) are pooled in float and cast back."""

Outputs = tuple[ir.Value, ir.Value, ir.Value, ir.Value]


def embedding_bag_table() -> dict[Any, Callable[..., Outputs]]:
    """Torch op -> translation, for ``torch.onnx.export(custom_translation_table=...)``."""
    import torch

    aten = torch.ops.aten
    return {
        aten.embedding_bag.padding_idx: embedding_bag,
        aten.embedding_bag.default: embedding_bag,
        aten._embedding_bag.default: _embedding_bag_signed_padding,
        aten._embedding_bag_forward_only.default: _embedding_bag_signed_padding,
    }


def embedding_bag(
    weight: ir.Value,
    indices: ir.Value,
    offsets: ir.Value,
    scale_grad_by_freq: bool = False,
    mode: int = _SUM,
    sparse: bool = False,
    per_sample_weights: ir.Value | None = None,
    include_last_offset: bool = False,
    padding_idx: int | None = None,
) -> Outputs:
    """``embedding_bag.padding_idx``: pooled rows, then torchlib-shaped placeholders for the rest.

    NOTE: the exporter calls translations positionally in the aten schema's order, so the signature
    mirrors ``aten::embedding_bag.padding_idx`` (with ``_embedding_bag``'s defaults) rather than our
    keyword-only convention. `scale_grad_by_freq` and `sparse` only matter to gradients.

    Args:
        weight: the table, (rows, D).
        indices: flat row ids, (N,).
        offsets: start of each bag in `indices`, (B,) or (B + 1,) with `include_last_offset`.
        scale_grad_by_freq: unused in inference.
        mode: 0 sum, 1 mean, 2 max.
        sparse: unused in inference.
        per_sample_weights: (N,) weights of the gathered rows (sum mode only), or None.
        include_last_offset: whether `offsets` ends with N instead of the last bag's start.
        padding_idx: a row id that contributes nothing to any bag (nor to a mean's count), or None.

    Returns:
        The pooled (B, D) output, then ``offset2bag``, ``bag_size`` and ``max_indices``, which are
        zeros with torch's shapes and dtypes: graphs use only the first output.
    """
    if not _is_handled(indices, offsets, mode, per_sample_weights):
        return _torchlib_embedding_bag(
            weight, indices, offsets, mode, per_sample_weights, include_last_offset, padding_idx
        )
    fixed = None if include_last_offset or padding_idx is not None else _fixed_length_bags(indices, offsets)
    if fixed is not None:
        pooled, num_bags = _pool_fixed_length(weight, fixed, mode, per_sample_weights), op.Shape(offsets)
    else:
        bag, num_bags = _bag_of_each_index(indices, offsets, include_last_offset)
        pad = None if padding_idx is None else _nonnegative_padding_idx(weight, padding_idx)
        pooled = _pool_ragged(weight, indices, bag, num_bags, mode, per_sample_weights, pad)
    return (op.CastLike(pooled, weight), *_placeholders(weight, indices, offsets, num_bags, mode, padding_idx))


def _embedding_bag_signed_padding(
    weight: ir.Value,
    indices: ir.Value,
    offsets: ir.Value,
    scale_grad_by_freq: bool = False,
    mode: int = _SUM,
    sparse: bool = False,
    per_sample_weights: ir.Value | None = None,
    include_last_offset: bool = False,
    padding_idx: int = -1,
) -> Outputs:
    """``_embedding_bag``: the same, except that a negative `padding_idx` means none.

    NOTE: ``embedding_bag.padding_idx`` wraps a negative padding_idx before it calls ``_embedding_bag``,
    which then reads -1 as "no padding".
    """
    padding = padding_idx if padding_idx >= 0 else None
    return embedding_bag(
        weight, indices, offsets, scale_grad_by_freq, mode, sparse, per_sample_weights, include_last_offset, padding
    )


def _is_handled(indices: ir.Value, offsets: ir.Value, mode: int, per_sample_weights: ir.Value | None) -> bool:
    """Whether this translation covers the call; torchlib's Loop handles anything else."""
    ranks = [None if v.shape is None else len(v.shape) for v in (indices, offsets)]
    return ranks == [1, 1] and mode in (_SUM, _MEAN, _MAX) and (per_sample_weights is None or mode == _SUM)


def _torchlib_embedding_bag(
    weight: ir.Value,
    indices: ir.Value,
    offsets: ir.Value,
    mode: int,
    per_sample_weights: ir.Value | None,
    include_last_offset: bool,
    padding_idx: int | None,
) -> Outputs:
    from onnxscript.function_libs.torch_lib.ops.core import aten_embedding_bag_padding_idx

    outputs = aten_embedding_bag_padding_idx(
        weight, indices, offsets, False, mode, False, per_sample_weights, include_last_offset, padding_idx
    )
    return tuple(outputs)


def _fixed_length_bags(indices: ir.Value, offsets: ir.Value) -> ir.Value | None:
    """The (B, k) ids that `indices` flattens, when `offsets` is ``arange(0, _, k)`` of length B.

    NOTE: that is what ``F.embedding_bag`` emits for a 2-D input; then bag i is ``ids[i]``. The length
    test relies on the exporter's symbolic dims: the same symbol is the same size.
    """
    flatten, arange = indices.producer(), offsets.producer()
    if flatten is None or arange is None or (flatten.op_type, arange.op_type) != ("Reshape", "Range"):
        return None
    ids = flatten.inputs[0]
    if ids is None or ids.shape is None or len(ids.shape) != 2 or offsets.shape is None:
        return None
    rows, k = ids.shape
    same_rows = isinstance(rows, int) or rows.value is not None
    if not (same_rows and rows == offsets.shape[0] and isinstance(k, int) and k > 0):
        return None
    if _constant_int(arange.inputs[0]) != 0 or _constant_int(arange.inputs[2]) != k:
        return None
    return ids


def _constant_int(value: ir.Value | None) -> int | None:
    """The integer scalar `value` is known to hold at translation time (through Casts), else None."""
    while value is not None:
        tensor = ir.convenience.get_const_tensor(value)
        if tensor is not None:
            array = tensor.numpy()
            return int(array.item()) if array.size == 1 and array.dtype.kind in "iu" else None
        node = value.producer()
        if node is None or node.op_type not in ("Cast", "Identity"):
            return None
        value = node.inputs[0]
    return None


def _gathered_rows(weight: ir.Value, ids: ir.Value, per_sample_weights: ir.Value | None) -> ir.Value:
    """``weight[ids]`` (times the per-sample weights) in the dtype the pooling runs in."""
    rows: ir.Value = op.Gather(weight, ids)
    if weight.dtype not in _NATIVE:
        rows = op.Cast(rows, to=ir.DataType.FLOAT)
    if per_sample_weights is not None:
        scale = op.Reshape(
            op.CastLike(per_sample_weights, rows), op.Concat(op.Shape(ids), op.Constant(value_ints=[1]), axis=0)
        )
        rows = op.Mul(rows, scale)
    return rows


def _pool_fixed_length(weight: ir.Value, ids: ir.Value, mode: int, per_sample_weights: ir.Value | None) -> ir.Value:
    """Pool bags of k consecutive rows: a reduction over axis 1 of the (B, k, D) gather."""
    rows = _gathered_rows(weight, ids, per_sample_weights)
    reduce = {_SUM: op.ReduceSum, _MEAN: op.ReduceMean, _MAX: op.ReduceMax}[mode]
    pooled: ir.Value = reduce(rows, [1], keepdims=0)
    return pooled


def _bag_of_each_index(indices: ir.Value, offsets: ir.Value, include_last_offset: bool) -> tuple[ir.Value, ir.Value]:
    """The bag each index belongs to, (N,), and the number of bags B as a 1-D shape.

    NOTE: a 1 at every bag start after the first, summed cumulatively, numbers the bags; empty bags
    share a start with the next one, so their marks add up and the count skips past them. A start
    at N (trailing empty bags) lands in the extra slot and is cut off.
    """
    n = op.Shape(indices)
    num_bags = op.Sub(op.Shape(offsets), [1]) if include_last_offset else op.Shape(offsets)
    starts = op.Slice(offsets, [1], num_bags)
    ones = op.Expand(op.Constant(value_int=1), op.Shape(starts))
    marks = op.ScatterElements(op.Expand(op.Constant(value_int=0), op.Add(n, [1])), starts, ones, reduction="add")
    return op.CumSum(op.Slice(marks, [0], n), op.Constant(value_int=0)), num_bags


def _nonnegative_padding_idx(weight: ir.Value, padding_idx: int) -> ir.Value | int:
    """`padding_idx` counted from the front, as torch wraps a negative one."""
    if padding_idx >= 0:
        return padding_idx
    rows = weight.shape[0] if weight.shape is not None else None
    if isinstance(rows, int):
        return padding_idx + rows
    wrapped: ir.Value = op.Add(op.Shape(weight, start=0, end=1), op.Constant(value_ints=[padding_idx]))
    return wrapped


def _pool_ragged(
    weight: ir.Value,
    indices: ir.Value,
    bag: ir.Value,
    num_bags: ir.Value,
    mode: int,
    per_sample_weights: ir.Value | None,
    padding_idx: ir.Value | int | None,
) -> ir.Value:
    """Scatter-reduce the gathered rows into their bags; empty bags come out as zeros, like torch's.

    NOTE: rows of `padding_idx` go to one extra bag that is cut off at the end, so they reach
    neither a sum nor a max nor a mean's count.
    """
    slots = num_bags
    if padding_idx is not None:
        slots = op.Add(num_bags, [1])
        bag = op.Where(op.Equal(indices, padding_idx), op.Squeeze(num_bags), bag)
    rows = _gathered_rows(weight, indices, per_sample_weights)
    shape = op.Concat(slots, op.Shape(weight, start=1), axis=0)
    start = float("-inf") if mode == _MAX else 0.0
    pooled: ir.Value = op.ScatterND(
        op.Expand(op.CastLike(start, rows), shape),
        op.Unsqueeze(bag, [1]),
        rows,
        reduction="max" if mode == _MAX else "add",
    )
    if mode != _SUM:
        pooled = _apply_bag_sizes(pooled, rows, bag, slots, mode)
    return pooled if padding_idx is None else op.Slice(pooled, [0], num_bags)


def _apply_bag_sizes(pooled: ir.Value, rows: ir.Value, bag: ir.Value, slots: ir.Value, mode: int) -> ir.Value:
    """A mean divides each sum by its bag's size; a max keeps zeros (not -inf) in empty bags."""
    zero, one = op.CastLike(0.0, rows), op.CastLike(1.0, rows)
    sizes = op.ScatterElements(op.Expand(zero, slots), bag, op.Expand(one, op.Shape(bag)), reduction="add")
    sizes = op.Unsqueeze(sizes, [1])
    finished: ir.Value = (
        op.Div(pooled, op.Max(sizes, one)) if mode == _MEAN else op.Where(op.Greater(sizes, zero), pooled, zero)
    )
    return finished


def _placeholders(
    weight: ir.Value, indices: ir.Value, offsets: ir.Value, num_bags: ir.Value, mode: int, padding_idx: int | None
) -> tuple[ir.Value, ir.Value, ir.Value]:
    """Zero ``offset2bag``, ``bag_size`` and ``max_indices`` with the shapes and dtypes torch gives them."""
    zero = op.Constant(value_int=0)
    offset2bag_shape = op.Constant(value_ints=[0]) if mode == _SUM and padding_idx is None else op.Shape(indices)
    bag_size = op.Expand(zero, op.Shape(offsets) if mode == _SUM else num_bags)
    max_indices = bag_size
    if mode == _MAX:
        max_indices = op.Expand(zero, op.Concat(num_bags, op.Shape(weight, start=1), axis=0))
    return op.Expand(zero, offset2bag_shape), bag_size, max_indices
