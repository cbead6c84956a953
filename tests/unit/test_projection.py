"""Gradient projection: identity rule, determinism, blockwise sums, JL scaling, torch parity."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from headwater.producers.capture import projection as proj
from headwater.producers.capture.projection import Projection, make_projection
from headwater.v1 import events_pb2

torch = pytest.importorskip("torch")

KINDS = ("rademacher", "sparse_jl")


def _grads(n: int, d: int, seed: int = 0, dtype: type = np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(dtype)


def _close(a: np.ndarray, b: np.ndarray, rel: float = 1e-5) -> None:
    """Equal up to float32 rounding of long sums, relative to the largest magnitude."""
    np.testing.assert_allclose(a, b, rtol=0, atol=rel * max(1.0, float(np.abs(b).max())))


# ---------------------------------------------------------------------------------------------
# identity rule


@pytest.mark.parametrize("d", [1, 100, 512])
def test_identity_when_parameter_count_at_most_k(d: int) -> None:
    p = make_projection(d, k=512, seed=9)
    assert (p.kind, p.output_dim, p.input_dim) == ("identity", d, d)
    x = _grads(3, d, dtype=np.float64)
    y = p.project(x)
    assert y.dtype == np.float32 and y.shape == (3, d)
    np.testing.assert_array_equal(y, x.astype(np.float32))
    yb = p.project_blocks([(d // 2, x[:, d // 2:]), (0, x[:, :d // 2])])
    np.testing.assert_array_equal(yb, y)


def test_projection_above_k() -> None:
    p = make_projection(513, k=512)
    assert (p.kind, p.output_dim) == ("rademacher", 512)
    assert p.project(_grads(2, 513)).shape == (2, 512)
    assert make_projection(513, k=512, kind="identity").output_dim == 513


# ---------------------------------------------------------------------------------------------
# the matrix: structure, scaling, pinned values


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", [512, 37, 5])
def test_matrix_structure_and_scaling(kind: str, k: int) -> None:
    p = make_projection(2000, k=k, seed=4, kind=kind)
    P = p.columns()
    assert P.shape == (k, 2000)
    # Every column has unit norm exactly, so E[PᵀP] = I needs only independent signs.
    np.testing.assert_allclose((P**2).sum(axis=0), 1.0, rtol=1e-12)
    nnz = (P != 0).sum(axis=0)
    s = min(k, proj.SPARSE_NNZ) if kind == "sparse_jl" else k
    assert (nnz == s).all()
    assert np.allclose(np.abs(P[P != 0]), 1 / np.sqrt(s))
    if kind == "sparse_jl":  # one nonzero in each of the s row blocks
        starts, sizes = proj._sparse_blocks(k)
        block_of_row = np.repeat(np.arange(s), sizes)
        for c in range(0, 2000, 97):
            assert sorted(block_of_row[np.flatnonzero(P[:, c])]) == list(range(s))
    signs = np.sign(P[P != 0])
    assert abs(signs.mean()) < 4 / np.sqrt(signs.size)  # fair signs (4 sigma)
    x = _grads(3, 2000, seed=1)
    _close(p.project(x), x.astype(np.float64) @ P.T)


def test_pinned_matrix_entries() -> None:
    """The generator is part of the wire contract: these values must never change."""
    rad = make_projection(100_000, k=512, seed=3, kind="rademacher")
    col = rad.columns(12345, 12346)[:24, 0]
    assert "".join("+" if v > 0 else "-" for v in col) == "-+---+---++---++-++-----"
    sjl = make_projection(100_000, k=512, seed=3, kind="sparse_jl")
    col = sjl.columns(99_999, 100_000)[:, 0]
    nz = np.flatnonzero(col)
    assert nz.tolist() == [36, 116, 150, 255, 290, 331, 410, 450]
    assert "".join("+" if v > 0 else "-" for v in col[nz]) == "-++--+-+"


def test_split_multiply_hash_matches_plain_32bit_arithmetic() -> None:
    """The overflow-free multiply (Python ints / torch int64) equals wrapping uint32 maths."""
    rng = np.random.default_rng(5)
    vals = rng.integers(0, 2**32, size=2000, dtype=np.uint64)

    def fmix_ref(h: int) -> int:
        h ^= h >> 16
        h = (h * 0x85EBCA6B) % 2**32
        h ^= h >> 13
        h = (h * 0xC2B2AE35) % 2**32
        return h ^ (h >> 16)

    ref = [fmix_ref(int(v)) for v in vals]
    assert [proj._fmix32(int(v)) for v in vals] == ref
    assert proj._fmix32(vals.astype(np.uint32)).tolist() == ref
    assert proj._fmix32(torch.from_numpy(vals.astype(np.int64))).tolist() == ref
    counters = rng.integers(0, 2**62, size=2000, dtype=np.int64)
    keys = proj._keys("rademacher", 2**64 - 1)
    assert (proj._hash(counters, keys).tolist()
            == proj._hash(torch.from_numpy(counters), keys).tolist())


# ---------------------------------------------------------------------------------------------
# determinism


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_output_different_seed_differs(kind: str) -> None:
    x = _grads(4, 3000)
    a = make_projection(3000, k=64, seed=11, kind=kind)
    b = make_projection(3000, k=64, seed=11, kind=kind)
    np.testing.assert_array_equal(a.project(x), b.project(x))
    np.testing.assert_array_equal(a.columns(), b.columns())
    for other in (make_projection(3000, k=64, seed=12, kind=kind),
                  make_projection(3000, k=64, seed=11 + 2**32, kind=kind)):
        assert not np.allclose(other.project(x), a.project(x))
        # independent streams: signs agree about half the time where both are nonzero
        pa, po = a.columns(), other.columns()
        both = (pa != 0) & (po != 0)
        agree = (np.sign(pa[both]) == np.sign(po[both])).mean()
        assert abs(agree - 0.5) < 4 * 0.5 / np.sqrt(both.sum())


def test_kinds_draw_independent_streams() -> None:
    r = make_projection(3000, k=64, seed=1, kind="rademacher").columns()
    s = make_projection(3000, k=64, seed=1, kind="sparse_jl").columns()
    both = s != 0
    agree = (np.sign(r[both]) == np.sign(s[both])).mean()
    assert abs(agree - 0.5) < 4 * 0.5 / np.sqrt(both.sum())


def test_same_projection_in_a_fresh_process() -> None:
    code = (
        "import sys, numpy as np\n"
        "from headwater.producers.capture.projection import make_projection\n"
        "x = np.random.default_rng(0).standard_normal((3, 5000)).astype(np.float32)\n"
        "for kind in ('rademacher', 'sparse_jl'):\n"
        "    p = make_projection(5000, k=128, seed=21, kind=kind)\n"
        "    sys.stdout.write(p.columns(4000, 4100).tobytes().hex() + '\\n')\n"
        "    sys.stdout.write(p.project(x).tobytes().hex() + '\\n')\n"
        "assert 'torch' not in sys.modules, 'NumPy use must not import torch'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    x = np.random.default_rng(0).standard_normal((3, 5000)).astype(np.float32)
    for i, kind in enumerate(KINDS):
        p = make_projection(5000, k=128, seed=21, kind=kind)
        assert bytes.fromhex(out[2 * i]) == p.columns(4000, 4100).tobytes()
        there = np.frombuffer(bytes.fromhex(out[2 * i + 1]), dtype=np.float32).reshape(3, 128)
        _close(there, p.project(x))


# ---------------------------------------------------------------------------------------------
# blocks


@pytest.mark.parametrize("kind", KINDS)
def test_blockwise_equals_whole(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proj, "TILE_BYTES", 64 * 4 * 100)  # 100-column tiles: many boundaries
    d = 2345
    p = make_projection(d, k=64, seed=2, kind=kind, parameters=("w", "b"))
    x = _grads(5, d, seed=3)
    whole = p.project(x)
    cuts = [0, 1, 100, 101, 777, 1500, 1501, d]
    blocks = [(a, x[:, a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    blocks = [blocks[i] for i in np.random.default_rng(1).permutation(len(blocks))]
    blocks.append((d, x[:, :0]))  # an empty block is allowed
    _close(p.project_blocks(iter(blocks)), whole)
    _close(whole, x.astype(np.float64) @ p.columns().T)


def test_blocks_of_mixed_float_dtypes() -> None:
    p = make_projection(1000, k=32, seed=0)
    x = _grads(2, 1000, dtype=np.float64)
    y = p.project_blocks([(0, x[:, :400].astype(np.float16)), (400, x[:, 400:])])
    ref = np.concatenate([x[:, :400].astype(np.float16), x[:, 400:]], axis=1)
    _close(y, p.project(ref.astype(np.float64)))


# ---------------------------------------------------------------------------------------------
# Johnson-Lindenstrauss: inner products kept, unbiased, with the predicted spread


@pytest.mark.parametrize("kind", KINDS)
def test_inner_products_preserved_within_jl_tolerance(kind: str) -> None:
    k, d, m = 512, 10_000, 200
    rng = np.random.default_rng(7)
    x = rng.standard_normal((m, d))
    rho = np.linspace(-0.9, 0.9, m)[:, None]  # m independent pairs with set correlations
    y = rho * x + np.sqrt(1 - rho**2) * rng.standard_normal((m, d))
    v = np.concatenate([x, y])
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    pv = make_projection(d, k=k, seed=13, kind=kind).project(v).astype(np.float64)
    true, est = (v[:m] * v[m:]).sum(axis=1), (pv[:m] * pv[m:]).sum(axis=1)
    # Var of the estimate for unit vectors: (1 + (x·y)² − 2Σx_i²y_i²)/k; the last term is ~1/d.
    z = (est - true) / np.sqrt((1 + true**2) / k)
    assert np.abs(z).max() < 5
    assert 0.8 < z.std() < 1.2  # the spread JL theory predicts: neither biased nor inflated
    assert abs(z.mean()) < 5 / np.sqrt(m)  # unbiased
    norms = (pv**2).sum(axis=1)  # |Px|² has sd √(2/k) around |x|² = 1
    assert np.abs(norms - 1).max() < 5.5 * np.sqrt(2 / k)
    assert np.abs(norms - 1).max() < 0.35  # every squared norm within 35% at k = 512


# ---------------------------------------------------------------------------------------------
# torch


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_torch_input_matches_numpy(kind: str, dtype: str) -> None:
    p = make_projection(3000, k=100, seed=5, kind=kind)  # 100: uneven blocks, 4 words
    t = torch.from_numpy(_grads(4, 3000)).to(getattr(torch, dtype))
    t.requires_grad_(True)
    y = p.project(t)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    assert y.device == t.device and not y.requires_grad
    ref = p.project(t.detach().float().numpy().astype(np.float64))
    _close(y.numpy(), ref)
    yb = p.project_blocks([(0, t[:, :1234]), (1234, t[:, 1234:])])
    _close(yb.numpy(), ref)


def test_torch_identity_and_cuda_if_present() -> None:
    p = make_projection(50, k=64)
    t = torch.arange(100, dtype=torch.float64).reshape(2, 50)
    assert torch.equal(p.project(t), t.float())
    if torch.cuda.is_available():
        q = make_projection(100_000, k=512, seed=8)
        x = _grads(8, 100_000)
        y = q.project(torch.from_numpy(x).cuda())
        assert y.is_cuda
        _close(y.cpu().numpy(), q.project(x))


# ---------------------------------------------------------------------------------------------
# spec: proto, id


def test_proto_round_trip() -> None:
    p = make_projection(10_000, k=512, seed=2**63 + 5, kind="sparse_jl",
                        parameters=("enc.w", "enc.b"))
    msg = events_pb2.Projection.FromString(p.to_proto().SerializeToString())
    assert msg.kind == events_pb2.Projection.SPARSE_JL and msg.projection_id == p.projection_id
    assert list(msg.parameters) == ["enc.w", "enc.b"]
    assert Projection.from_proto(msg) == p
    ident = make_projection(10, k=512)
    assert Projection.from_proto(ident.to_proto()) == ident
    msg.projection_id = "0" * 32
    with pytest.raises(ValueError, match="projection_id"):
        Projection.from_proto(msg)
    with pytest.raises(ValueError, match="kind"):
        Projection.from_proto(events_pb2.Projection(input_dim=10, output_dim=10))


def test_projection_id_is_stable_and_covers_every_field() -> None:
    p = make_projection(10_000, k=512, seed=3, kind="rademacher",
                        parameters=("fc.weight", "fc.bias"))
    assert p.projection_id == "d1ef2041dcc84be19f931cd40b4b24aa"
    variants = [make_projection(10_000, k=512, seed=4, parameters=("fc.weight", "fc.bias")),
                make_projection(10_001, k=512, seed=3, parameters=("fc.weight", "fc.bias")),
                make_projection(10_000, k=256, seed=3, parameters=("fc.weight", "fc.bias")),
                make_projection(10_000, k=512, seed=3, kind="sparse_jl",
                                parameters=("fc.weight", "fc.bias")),
                make_projection(10_000, k=512, seed=3, parameters=("fc.bias", "fc.weight"))]
    assert len({v.projection_id for v in variants} | {p.projection_id}) == 6


# ---------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("call, match", [
    (lambda: make_projection(100, k=0), "k must be in"),
    (lambda: make_projection(0, k=8), "input_dim must be in"),
    (lambda: make_projection(100, k=8, kind="gaussian"), "unknown projection kind 'gaussian'"),
    (lambda: make_projection(100, k=8, seed=-1), "seed must be in"),
    (lambda: make_projection(100, k=8, seed=1.5), "seed must be an integer"),
    (lambda: make_projection(100, k=8, parameters="w"), "not one string"),
    (lambda: make_projection(100, k=8, parameters=("w", "w")), "repeat"),
    (lambda: Projection("identity", 0, 10, 5), "output_dim == input_dim"),
])
def test_bad_spec(call, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_gradients() -> None:
    p = make_projection(100, k=8)
    with pytest.raises(ValueError, match="d=99 columns but the projection's input_dim is 100"):
        p.project(np.zeros((2, 99), np.float32))
    with pytest.raises(ValueError, match="must be 2-D"):
        p.project(np.zeros(100, np.float32))
    with pytest.raises(ValueError, match="must be 2-D"):
        p.project(torch.zeros(1, 2, 100))
    with pytest.raises(ValueError, match="floating dtype"):
        p.project(np.zeros((2, 100), np.int64))
    x = np.zeros((3, 100), np.float32)
    x[1, 5] = np.nan
    with pytest.raises(ValueError, match=r"non-finite projections in rows \[1\]"):
        p.project(x)


def test_bad_blocks() -> None:
    p = make_projection(100, k=8)
    z = np.zeros((2, 50), np.float32)
    with pytest.raises(ValueError, match=r"do not cover columns \[50, 100\)"):
        p.project_blocks([(0, z)])
    with pytest.raises(ValueError, match=r"do not cover columns \[0, 40\)"):
        p.project_blocks([(40, z), (90, z[:, :10])])
    with pytest.raises(ValueError, match=r"\[40, 90\) overlaps block \[0, 50\)"):
        p.project_blocks([(0, z), (40, z)])
    with pytest.raises(ValueError, match="past input_dim=100"):
        p.project_blocks([(0, z), (60, z)])
    with pytest.raises(ValueError, match="block 1 has 3 rows, block 0 has 2"):
        p.project_blocks([(0, z), (50, np.zeros((3, 50), np.float32))])
    with pytest.raises(ValueError, match="mixes NumPy arrays and torch tensors"):
        p.project_blocks([(0, z), (50, torch.zeros(2, 50))])
    with pytest.raises(ValueError, match="column_offset must be an integer"):
        p.project_blocks([(0.0, z), (50, z)])
    with pytest.raises(ValueError, match="no gradient blocks"):
        p.project_blocks([])
    with pytest.raises(ValueError, match=r"\(column_offset, array\) pair"):
        p.project_blocks([z])


# ---------------------------------------------------------------------------------------------
# memory


@pytest.mark.parametrize("kind", KINDS)
def test_memory_stays_bounded_by_the_tile(kind: str) -> None:
    """P here would be 512 × 120k float32 = 240 MB; only one 16 MB tile may exist at a time."""
    d, n = 120_000, 8
    block = _grads(n, 40_000)
    p = make_projection(d, k=512, seed=1, kind=kind)
    tracemalloc.start()
    try:
        p.project_blocks((o, block) for o in range(0, d, 40_000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2.5 * proj.TILE_BYTES + 2**20, f"peak {peak / 2**20:.1f} MiB"
