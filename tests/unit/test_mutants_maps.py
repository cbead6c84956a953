"""The row maps by kind of op (producers/tracking/maps.py) equal to what NumPy itself does:
each output row's input rows, read off a perturbation of each input row (products,
broadcasts) or off arrays holding their own row numbers (indexing, reshapes). Exact, not
just covering, so that a mutant widening a map to all rows fails too (issue 25,
`make mutate`)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from headwater.producers import rowmap
from headwater.producers.tracking import maps as mp
from headwater.producers.tracking import segments as sg

RNG = np.random.default_rng(3)


def _resolved(segments: sg.Segments, n_out: int, n_in: dict[int, int]
              ) -> list[dict[int, set[int]]]:
    """Per output row: input index -> its input rows, through the segments."""
    out: list[dict[int, set[int]]] = [{} for _ in range(n_out)]
    for (i, _), seg in zip(segments, sg.decode_segments(segments), strict=True):
        for r in range(seg.out_start, seg.out_start + seg.length):
            rows = rowmap.segment_inputs(seg, np.array([r]), n_in[i])
            out[r].setdefault(i, set()).update(int(v) for v in rows)
    return out


def _own_rows(shape: tuple[int, ...]) -> np.ndarray:
    """An array whose every element is its row number."""
    return np.broadcast_to(np.arange(shape[0]).reshape((-1,) + (1,) * (len(shape) - 1)),
                           shape).copy()


def _by_row_values(out: np.ndarray) -> list[dict[int, set[int]]]:
    out = np.asarray(out)
    if out.ndim and len(out) == 0:
        return []
    rows = out.reshape(1, -1) if out.ndim == 0 else out.reshape(len(out), -1)
    return [{0: {int(v) for v in r}} if r.size else {} for r in rows]


KEYS = [
    (slice(None),), (slice(1, 7, 2),), (slice(None, None, -1),), (slice(5, 2),), (3,), (-2,),
    (np.array([4, 0, 4, -1]),), (np.array([[1, 2], [3, 0]]),), (np.arange(8) % 3 == 0,),
    (Ellipsis, 1), (Ellipsis,), (None, 2), (None, slice(None)), (None,), (None, Ellipsis),
    (None, Ellipsis, 1, 1), (2, slice(None)), (slice(2, 5), 1), (np.array([1, 5]), 0),
    (np.array([1, 5]), np.array([0, 2])), (Ellipsis, 2, 1, 0), (np.array(3),), (),
    (np.array([], dtype=np.int64),), ([2, 2, 7],), (slice(None), np.array([0, 1])),
    (0, np.array([1, 0])), (Ellipsis, np.array([0, 1])), (slice(None), None, np.array([0, 1])),
    (-1,), (None, -1), (slice(None), np.array([0, 1]), np.array([1, 0])),
    # a mask after an Ellipsis, or after None and an Ellipsis, counts its ndim as axes
    (Ellipsis, np.arange(48).reshape(8, 3, 2) % 5 == 0),
    (None, Ellipsis, 2, np.array([[True, False], [False, True], [True, True]])),
    (np.zeros((3, 0), dtype=np.int64),),  # empty index rows: n_out rows, nothing to read
    ([[], [], []],),  # the same as nested lists (NumPy reads them as float, empty: ints)
    (None, 2, slice(None)),  # a new axis, then an int: that row, whatever follows
]


@pytest.mark.parametrize("key", KEYS, ids=repr)
def test_getitem_maps_are_exactly_numpys_rows(key: tuple) -> None:
    x = _own_rows((8, 3, 2))
    out = x[key]
    n_out = sg.n_rows(out.shape)
    segments, params = mp.getitem_segments(key, x.shape, n_out)
    json.loads(params)
    got = _resolved(segments, n_out, {0: 8})
    want = _by_row_values(out)
    if any(seg.WhichOneof("kind") == "all_rows" for seg in sg.decode_segments(segments)):
        want = [{0: set(range(8))} for _ in want]  # a new leading axis: one row of all rows
        assert _by_row_values(out) == [{0: set(range(8))}] * n_out
    assert got == want, (key, segments)


ARR = np.array([0, 1])


@pytest.mark.parametrize("key", [(slice(None), ARR, slice(None), ARR),
                                 (Ellipsis, ARR, slice(None), ARR),
                                 (None, slice(None), ARR, slice(None), ARR),
                                 (slice(None), ARR, slice(None), 0),  # an int is advanced too
                                 (None, np.array([1])), (np.array(True),), (True,),
                                 (np.array([0.5]),)], ids=repr)
def test_advanced_indices_moved_in_front_of_the_rows_are_not_understood(key: tuple) -> None:
    with pytest.raises(mp.NotUnderstood):
        mp.getitem_segments(key, (8, 3, 2, 2), 2)


def test_getitem_of_a_scalar_and_of_nothing() -> None:
    assert mp.getitem_segments((), (), 1) == ([sg.broadcast(0, 0, 1)], "{}")
    assert mp.getitem_segments((slice(None),), (5,), 0) == ([], "{}")
    assert mp.getitem_segments(slice(1, 3), (5,), 2)[1] == \
        '{"key": "slice", "start": 1, "stop": 3, "step": 1}'
    assert json.loads(mp.getitem_segments(np.arange(8) > 3, (8,), 4)[1]) == {"key": "mask"}
    assert json.loads(mp.getitem_segments(np.array([1]), (8,), 1)[1]) == {"key": "indices"}
    assert json.loads(mp.getitem_segments((np.arange(8) > 3, 0), (8, 3), 4)[1]) == \
        {"key": "mask"}  # named by the first entry
    assert mp.getitem_segments((np.array(3),), (8,), 1)[1] == '{"key": "int"}'  # 0-d: an int
    wide = np.zeros((2, sg.MAX_FANIN_SEGMENTS + 1), dtype=np.int64)
    with pytest.raises(mp.NotUnderstood):
        mp.getitem_segments((wide,), (8,), 2)


def _perturbed(f, operands: list[np.ndarray]) -> list[dict[int, set[int]]]:
    base = np.asarray(f(*operands))
    n_out = sg.n_rows(base.shape)
    found: list[dict[int, set[int]]] = [{} for _ in range(n_out)]
    for i, a in enumerate(operands):
        for s in range(sg.n_rows(a.shape)):
            moved = [o.copy() for o in operands]
            if a.ndim:
                moved[i][s] += 1.0 + RNG.random(moved[i][s].shape)
            else:
                moved[i] = moved[i] + 1.5
            changed = np.asarray(f(*moved)) != base
            rows = changed.reshape(n_out, -1).any(axis=1) if base.ndim else changed.reshape(1)
            for r in np.flatnonzero(rows):
                found[r].setdefault(i, set()).add(s)
    return found


PRODUCTS = [("matmul", (4, 3), (3, 5)), ("matmul", (3,), (3, 5)), ("matmul", (4, 3), (3,)),
            ("matmul", (2, 4, 3), (3, 5)), ("matmul", (2, 4, 3), (2, 3, 5)),
            ("matmul", (3,), (3,)), ("matmul", (4, 3), (2, 3, 5)), ("matmul", (2, 4, 3), (3,)),
            ("dot", (4, 3), (3, 5)), ("dot", (3,), (2, 3, 5)),
            ("dot", (3,), (3, 5)), ("dot", (), (4, 2)), ("dot", (4, 2), ()),
            ("inner", (4, 3), (5, 3)), ("inner", (3,), (5, 3)), ("inner", (3,), (3,)),
            ("vdot", (2, 3), (3, 2))]


@pytest.mark.parametrize(("kind", "a", "b"), PRODUCTS, ids=repr)
def test_product_maps_are_exactly_the_rows_each_output_row_reads(kind: str, a: tuple,
                                                                 b: tuple) -> None:
    fa, fb = RNG.normal(size=a), RNG.normal(size=b)
    f = getattr(np, kind)
    out_shape = np.shape(f(fa, fb))
    segments = mp.product_segments(kind, 0, a, 1, b, out_shape)
    got = _resolved(segments, sg.n_rows(out_shape), {0: sg.n_rows(a), 1: sg.n_rows(b)})
    assert got == _perturbed(f, [fa, fb]), (kind, a, b)


def test_a_product_of_an_array_with_itself_and_with_untracked_operands() -> None:
    segs = mp.product_segments("matmul", 0, (4, 4), 0, (4, 4), (4, 4))
    assert segs == [sg.all_rows(0, 4, "matrix product")]  # rows and all rows: all rows
    assert mp.product_segments("matmul", None, (4, 3), 1, (3, 5), (4, 5)) == \
        [sg.all_rows(1, 4, "matrix product")]
    assert mp.product_segments("matmul", 0, (4, 3), None, (3, 5), (4, 5)) == \
        [sg.identity(0, 4)]
    assert mp.product_segments("dot", 0, (), 0, (), ()) == [sg.identity(0, 1)]
    assert mp.product_segments("matmul", 0, (0, 3), 1, (3, 5), (0, 5)) == []
    # a scalar operand broadcasts its one row (not "all rows" of a matrix product)
    assert mp.product_segments("dot", 0, (4, 2), 1, (), (4, 2)) == [sg.identity(0, 4),
                                                                     sg.broadcast(1, 0, 4)]


RESHAPES = [((6, 4), (6, 2, 2)), ((6, 4), (3, 8)), ((6, 4), (1, 24)), ((6, 4), (12, 2)),
            ((1, 6), (3, 2)), ((6, 4), (8, 3)), ((4, 6), (6, 4)), ((6, 4), (24,)),
            ((5, 3), (3, 5)), ((3, 4, 2), (2, 12)), ((0, 4), (0, 2, 2)), ((24,), (4, 6)),
            ((2, 4), (4, 2))]


@pytest.mark.parametrize(("src", "dst"), RESHAPES, ids=repr)
def test_reshape_maps_are_exactly_numpys_rows(src: tuple, dst: tuple) -> None:
    x = _own_rows(src)
    out = x.reshape(dst)
    segments = mp.reshape_segments(0, src, dst)
    assert _resolved(segments, sg.n_rows(dst), {0: sg.n_rows(src)}) == \
        ([] if out.size == 0 else _by_row_values(out))


def test_reshapes_joining_or_spanning_too_many_rows_are_not_understood() -> None:
    q = sg.MAX_FANIN_SEGMENTS
    assert len(mp.reshape_segments(0, (2 * q, 1), (2, q))) == q
    with pytest.raises(mp.NotUnderstood):
        mp.reshape_segments(0, (2 * (q + 1), 1), (2, q + 1))
    odd = 2 * q - 1  # rows of 2 into rows of 127: each output row spans 64 input rows
    assert len(mp.reshape_segments(0, (odd, 2), (2, odd))) >= q
    with pytest.raises(mp.NotUnderstood):  # rows of 131 span 66 input rows
        mp.reshape_segments(0, (odd + 4, 2), (2, odd + 4))
    assert mp.reshape_segments(0, (0, 3), (0,)) == [] and \
        mp.reshape_segments(0, (3, 0), (0, 5)) == []


@pytest.mark.parametrize(("a", "b"), [((4, 3), (4, 3)), ((4, 3), (1, 3)), ((4, 3), (3,)),
                                      ((4, 3), ()), ((4, 1, 3), (2, 3)), ((1, 3), (4, 3))],
                         ids=repr)
def test_broadcast_operands_map_exactly(a: tuple, b: tuple) -> None:
    fa, fb = RNG.normal(size=a), RNG.normal(size=b)
    out_shape = np.add(fa, fb).shape
    ta, tb = SimpleNamespace(shape=a), SimpleNamespace(shape=b)
    segs = mp.elementwise_segments({id(ta): 0, id(tb): 1}, [(0, ta), (1, tb), (2, ta)],
                                   out_shape)
    assert len(segs) == 2
    got = _resolved(segs, out_shape[0], {0: sg.n_rows(a), 1: sg.n_rows(b)})
    assert got == _perturbed(np.add, [fa, fb]), (a, b)
    assert mp.elementwise_segments({}, [(0, ta)], out_shape) == []
    assert mp.elementwise_segments({id(tb): 1}, [(0, ta), (1, tb)], out_shape) == \
        [mp.operand_segment(1, b, out_shape)]  # an untracked operand first is passed over
    assert mp.operand_segment(0, a, (0,) + out_shape[1:]) is None
    assert mp.operand_segment(0, (), ()) == sg.identity(0, 1)


@pytest.mark.parametrize(("shape", "axis", "kind"),
                         [((5, 3), None, "all_rows"), ((5, 3), 0, "all_rows"),
                          ((5, 3), -2, "all_rows"), ((5, 3), 1, "range"),
                          ((5, 3), (1, 0), "all_rows"), ((5, 3), [1], "range"),
                          ((), None, "range"), ((5, 3, 2), (1, 2), "range")])
def test_reductions_depend_on_all_rows_only_when_they_reduce_over_rows(
        shape: tuple, axis, kind: str) -> None:
    x = np.zeros(shape)
    n_out = sg.n_rows(np.sum(x, axis=tuple(axis) if isinstance(axis, list) else axis).shape)
    segs, ok = mp.reduction_segments(0, x, axis, n_out)
    (seg,) = sg.decode_segments(segs)
    assert ok and seg.WhichOneof("kind") == kind and seg.length == n_out
    if kind == "all_rows":
        assert seg.all_rows.reason == sg.REDUCTION
    elif shape:
        assert (seg.range.start, seg.range.step) == (0, 1)
    else:
        assert (seg.range.start, seg.range.step) == (0, 0)
    assert mp.reduction_segments(0, x, axis, 0) == ([], True)


def test_axis_params_and_unknown_ops() -> None:
    assert mp.json_axis(None) == '{"axis": null}' and mp.json_axis(np.int64(2)) == \
        '{"axis": 2}'
    assert json.loads(mp.json_axis((0, -1))) == {"axis": [0, -1]}
    assert mp.covers_rows(-3, 3) and not mp.covers_rows(1, 3) and mp.covers_rows(1, 0)
    assert mp.not_understood(2, 3, "f") == [sg.all_rows(0, 3, "op not understood: f"),
                                            sg.all_rows(1, 3, "op not understood: f")]
    assert mp.not_understood(2, 0, "f") == []


def test_stacked_blocks_are_placed_one_after_another() -> None:
    a, b, c = object(), object(), object()
    call = SimpleNamespace(input_of=lambda p: {id(a): 0, id(b): 1}.get(id(p)))
    segs = mp.stacked_segments(call, [(a, 3, True), (c, 2, True), (b, 4, False), (a, 0, True)],
                               9)
    assert segs == [sg.range_segment(0, 0, 1, 3, 0),
                    sg.all_rows(1, 4, "stacked as one row", 5)]
    with pytest.raises(mp.NotUnderstood):
        mp.stacked_segments(call, [(a, 3, True)], 4)


def test_reshape_row_maps_are_encoded_compactly() -> None:
    """Joining q whole rows is q strided ranges; an empty array maps nothing."""
    assert mp.reshape_segments(0, (6, 4), (3, 8)) == [sg.range_segment(0, 0, 2, 3),
                                                      sg.range_segment(0, 1, 2, 3)]
    assert mp.reshape_segments(0, (3, 0), (3, 0, 1)) == []


def test_one_output_row_joining_more_rows_than_segments_is_one_all_rows_segment() -> None:
    """Every row into one is a single all-rows segment however many rows, not q ranges."""
    q = sg.MAX_FANIN_SEGMENTS + 1
    assert mp.reshape_segments(0, (q, 1), (1, q)) == [sg.all_rows(0, 1, "all rows in one")]
