"""Tracked torch tensors: every op records an `OpRecorded` with its row mapping.

    tracker = Tracker(publisher.publish)                  # the NumPy tracker, shared
    x = track_tensor(tracker, features, source=registered) # a TrackedTensor; dim 0 = rows
    loader = tracked_loader(tracker, TensorDataset(x, y), batch_size=32, shuffle=True, seed=0)
    for xb, yb in loader:                                 # one headwater.batch op per tensor
        loss = F.cross_entropy(model(xb), yb)             # one OpRecorded per torch op
        loss.backward()                                   # autograd works as usual
        keys = row_keys(xb)                               # RowKeys for GradientBatch

A `TrackedTensor` is a `torch.Tensor` subclass carrying a lineage node id and its
`Tracker` (tracking/tracker.py: node ids, granularity, code_version and the event
encoding are shared with tracked NumPy arrays). torch hands every function and method
call that sees one to `__torch_function__`, which runs the op on plain tensors (subclass
dispatch disabled, so autograd and devices behave as without tracking), wraps tensor
results as new nodes and emits one event whose row map says, for each output row (index on
dim 0), which input rows it depends on. The row-map builders are
shared with NumPy's (tracking/maps.py).

Inputs: tracked tensors only. Model parameters, buffers and other plain tensors are
constants of the op (as untracked NumPy arrays are): a model's forward pass maps rows of
its input only. Index tensors of `x[idx]`, `index_select`, `gather`, `masked_select`, and
reference tensors (`x.to(y)`, `x.type_as(y)`, `x.expand_as(y)`, `x.view_as(y)`) are
listed in `input_node_ids` without row segments: they select or shape, not give values.

Understood ops (row maps exact): elementwise ops, Tensor operators and nn.functional
activations/dropouts with broadcasting; reductions (`sum`, `mean`, `std`, `max`, `argmax`,
`logsumexp`, `norm`, ...) over dim 0 / None (all rows) or other dims (identity); losses
(`reduction="none"`: row-aligned; mean/sum: all rows); `softmax`/`log_softmax`/
`normalize`/`sort`/`topk` along dims (along rows: all rows); `__getitem__` with slices, ints,
int tensors/lists, bool masks, None/Ellipsis; `index_select`, `gather`, `take`,
`take_along_dim`, `masked_select`, `nonzero`/`argwhere`, `where`; `cat`/`stack`/
`vstack`/`hstack`/`column_stack`/`dstack`; `split`/`chunk`/`tensor_split`/`unbind`/
`vsplit`/`hsplit`; `reshape`/`view`/`flatten`/`unflatten`/`squeeze`/`unsqueeze` (C-order,
like NumPy's); `expand`/`broadcast_to`; `permute`/`transpose`/`t`/`T`/`mT`/`movedim`
(dim 0 stays: identity; moved: pending, as NumPy's, so round trips are identity); `flip`,
`roll`, `repeat`, `tile`, `narrow`, `unfold(0, ...)`,
`repeat_interleave`, `diff`; `matmul`/`mm`/`bmm`/`mv`/`dot`/`outer`/`addmm`/`cdist`/
`F.linear` (rows of the left operand, all rows of the right); batched nn ops (`conv*`,
pools, `layer_norm`/`group_norm`, `embedding`, `one_hot`, `pad`, `interpolate`,
`scaled_dot_product_attention`; `batch_norm` in training uses batch statistics: all rows);
conversions `.to()`/`.float()`/`.detach()`/`.clone()`/`.contiguous()`/`.cpu()`
(identity). Anything else is recorded honestly: `understood=False`, every output row
depending on all rows of every tracked input, reason "op not understood: <name>"; the
output stays tracked. Cumulative ops over rows are recorded the same way.

In place: `x.add_(y)`, `x += y`, `x[i] = v`, `F.relu(x, inplace=True)`, `out=` record an
op and re-bind `x` to the new node. Ops that return their input unchanged (`x.float()` on
a float tensor) return it as it is: same object, same node, no event.

Granularity (the tracker's): "every_op" as above; "batch": only dataset-level ops
(`tracked_loader` batches, `split`, `shuffle`) are recorded, torch ops only remember which
recorded nodes they came from (one `headwater.unrecorded_ops` event when a dataset op
needs such a node); "off": `track_tensor` returns plain tensors, nothing is recorded.

Not seen (documented limits, as for NumPy): code that reads a tracked tensor's memory
outside torch's function protocol (`torch.from_numpy(x.numpy())`, `x.data_ptr()`, custom
C++/CUDA kernels); writes through a view into a tracked tensor's storage (the base keeps
its node); `x.grad` is returned untracked (gradients are captured elsewhere).

Layout: tensor.py (TrackedTensor, `__torch_function__` dispatch, recording, op names),
ops.py / shape_ops.py / nn_ops.py (the rules, registered in tracking/registry.py),
data.py (track_tensor, to_array, row_keys, split, shuffle, tracked_loader). This
subpackage is the only part of tracking that imports torch.
"""

from __future__ import annotations

from headwater.producers.tracking.torch import nn_ops, ops, shape_ops  # noqa: F401 - rules
from headwater.producers.tracking.torch.data import (
    TrackedLoader,
    row_keys,
    shuffle,
    split,
    to_array,
    track_tensor,
    tracked_loader,
)
from headwater.producers.tracking.torch.tensor import TrackedTensor, node_of

__all__ = [
    "TrackedLoader",
    "TrackedTensor",
    "node_of",
    "row_keys",
    "shuffle",
    "split",
    "to_array",
    "track_tensor",
    "tracked_loader",
]
