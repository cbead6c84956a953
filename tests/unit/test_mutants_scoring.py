"""The attribution maths (query_service/attribution/scoring.py) against the formulas written
out by hand on small matrices: every function, each branch, so that a mutant of the module
(issue 25, `make mutate`) changes an answer one of these checks."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from headwater.errors import AttributionError, NothingToAttribute
from headwater.query_service.attribution import scoring as sc

RNG = np.random.default_rng(25)
K = 3


def _examples(n: int) -> list[sc.Example]:
    return [sc.Example(f"node-{i}", i, [sc.SourceRow(f"s{i % 2}", f"file{i % 2}.csv",
                                                     f"node-{i}", i)], [f"op{i % 3}"])
            for i in range(n)]


def _block(kind: str = "TRAINING_STEP", version: str = "v1", projection: str = "p",
           example: list[int] | None = None, step: list[int] | None = None,
           target: list[float] | None = None) -> sc.Block:
    example = example if example is not None else [0, 1, 2, 0, 1, 3]
    n = len(example)
    return sc.Block(version=version, kind=kind, projection_id=projection,
                    phi=RNG.normal(size=(n, K)).astype(np.float32),
                    q=RNG.uniform(0.2, 1.0, n), w=RNG.uniform(0.1, 0.3, n),
                    lr=RNG.uniform(0.05, 0.5, n),
                    step=np.array(step if step is not None else list(range(n))),
                    target=np.array(target if target is not None else [1.0] * n),
                    example=np.array(example))


def _model(*blocks: sc.Block, n: int = 4) -> sc.Model:
    return sc.Model("clf", rows=n, blocks=list(blocks), examples=_examples(n),
                    versions=sorted({b.version for b in blocks}))


def _spd(k: int = K) -> np.ndarray:
    a = RNG.normal(size=(k, k))
    return a @ a.T + 0.5 * np.eye(k)


# -- small helpers ----------------------------------------------------------------------------

def test_unsign_flips_the_rows_with_a_non_positive_label_and_keeps_the_dtype() -> None:
    phi = np.arange(8, dtype=np.float32).reshape(4, 2) + 1
    out = sc.unsign(phi, np.array([1, 0, 2, -1]))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, phi * np.array([[1], [-1], [1], [-1]]))


def test_latest_per_example_is_each_examples_highest_step_and_is_cached() -> None:
    block = _block(example=[2, 0, 2, 1, 0, 2], step=[5, 1, 9, 4, 3, 7])
    latest = sc.latest_per_example(block)
    assert sorted(latest.tolist()) == [2, 3, 4]  # ex2 step 9, ex1 step 4, ex0 step 3
    assert block.latest is latest
    block.latest = np.array([0])
    assert sc.latest_per_example(block).tolist() == [0]  # the cache answers


@pytest.mark.parametrize("block_rows", [1, 2, 3, 7, 50])
def test_matvec_equals_the_product_in_any_block_size(block_rows: int) -> None:
    phi, u = RNG.normal(size=(7, K)), RNG.normal(size=K)
    np.testing.assert_allclose(sc.matvec(phi, u, block_rows), phi @ u, rtol=1e-12)


# -- damping ----------------------------------------------------------------------------------

def test_damping_order_request_then_recorded_l2_then_the_spectrum() -> None:
    c = np.diag([1.0, 2.0, 6.0])
    assert sc.Damping(0.25).of(c, l2=0.5) == (0.25, "request")
    assert sc.Damping().of(c, l2=0.5) == (0.5, "recorded l2")
    lam, source = sc.Damping(factor=0.3).of(c)
    assert lam == pytest.approx(0.3 * 3.0) and source == "0.3 x mean eigenvalue"
    assert sc.Damping().of(c)[0] == pytest.approx(sc.SPECTRUM_FACTOR * 3.0)
    assert sc.Damping(factor=2.0).of(np.zeros((2, 2)))[0] == pytest.approx(2e-12)


def test_the_default_damping_is_positive_and_fixed() -> None:
    """λ > 0 keeps C + λI positive definite for a PSD curvature; a Damping is a value."""
    c = _spd()
    assert sc.Damping().of(c)[0] > 0
    with pytest.raises(AttributeError):
        sc.Damping().value = 1.0  # type: ignore[misc]


def test_damping_for_takes_the_first_non_zero_value() -> None:
    c = np.diag([2.0, 4.0])
    assert sc.damping_for(c, 0.0, 0.7, 0.9) == 0.7
    assert sc.damping_for(c) == pytest.approx(sc.SPECTRUM_FACTOR * 3.0)


# -- blocks -----------------------------------------------------------------------------------

def test_version_block_prefers_featurisation_rows_and_filters_by_projection() -> None:
    step, feat = _block("TRAINING_STEP"), _block("FEATURISATION")
    other = _block("FEATURISATION", projection="q")
    model = _model(step, feat, other, _block("TRAINING_STEP", version="v2"))
    assert sc.version_block(model, "v1") is feat
    assert sc.version_block(model, "v1", "q") is other
    assert sc.version_block(_model(step), "v1", "p") is step
    with pytest.raises(NothingToAttribute, match=r"model clf has no gradient rows at version "
                       r"'v3'$"):
        sc.version_block(model, "v3")
    with pytest.raises(NothingToAttribute, match="'v2' with that projection"):
        sc.version_block(model, "v2", "q")


def test_per_example_rescales_only_a_training_step_curvature_with_a_count() -> None:
    c = _spd()
    block = _block("TRAINING_STEP", example=[0, 1, 2, 0, 1, 3])  # 4 examples
    np.testing.assert_allclose(sc.per_example(block, c, 6), c * (4 / 6))
    assert sc.per_example(block, c, 0) is c
    assert sc.per_example(_block("FEATURISATION"), c, 6) is c


# -- the three scores -------------------------------------------------------------------------

@pytest.mark.parametrize("block_rows", [1, 4, 100])
def test_influence_of_block_is_q_phi_solve_test_for_each_latest_row(block_rows: int) -> None:
    block = _block(example=[0, 1, 2, 0, 1, 3], step=[0, 1, 2, 3, 4, 5])
    c, test, lam = _spd(), RNG.normal(size=K), 0.3
    examples, scores = sc.influence_of_block(block, c, test, lam, block_rows)
    inv = np.linalg.inv(c + lam * np.eye(K))
    u = inv @ test
    want = {int(block.example[i]): block.q[i] * block.phi[i].astype(float) @ u
            for i in (2, 3, 4, 5)}  # rows 0 and 1 are superseded by 3 and 4
    # the score is a float32 dot product: its error scales with the terms' magnitudes,
    # not with the (possibly cancelling) sum
    scale = {int(block.example[i]): abs(block.q[i]) * np.abs(block.phi[i]) @ np.abs(u)
             for i in (2, 3, 4, 5)}
    assert sorted(examples.tolist()) == sorted(want)
    for ex, s in zip(examples.tolist(), scores, strict=True):
        assert abs(s - want[ex]) <= 1e-5 * scale[ex]


def test_self_influence_is_the_quadratic_form_of_each_latest_row() -> None:
    block = _block(example=[0, 1, 0, 2], step=[0, 1, 2, 3])
    model, c, lam = _model(block, n=4), _spd(), 0.2
    scores = sc.self_influence_scores(model, block, c, lam)
    inv = np.linalg.inv(c + lam * np.eye(K))
    phi = block.phi.astype(float)
    want = np.zeros(4)
    for i in (1, 2, 3):
        want[block.example[i]] = block.q[i] * phi[i] @ inv @ phi[i]
    np.testing.assert_allclose(scores, want, rtol=1e-6)
    assert scores[3] == 0.0  # an example without rows in the block scores nothing


def test_tracin_sums_lr_q_phi_dot_test_over_training_steps_with_each_versions_test() -> None:
    b1 = _block("TRAINING_STEP", version="v1", example=[0, 1, 0], step=[0, 1, 2])
    b2 = _block("TRAINING_STEP", version="v2", example=[1, 2, 2], step=[3, 4, 5])
    b3 = _block("TRAINING_STEP", version="v3", example=[3, 0], step=[6, 7])
    feat = _block("FEATURISATION", version="v1")
    other = _block("TRAINING_STEP", version="v2", projection="other")
    model = _model(feat, b1, other, b2, b3)  # skipped blocks before and between the others
    t0 = sc.TestGradient("v0", "p", RNG.normal(size=K).astype(np.float32), "")
    t1 = sc.TestGradient("v1", "p", RNG.normal(size=K).astype(np.float32), "")
    t2 = sc.TestGradient("v2", "p", RNG.normal(size=K).astype(np.float32), "")
    scores, version = sc.tracin_scores(model, [t0, t1, t2], block_rows=2)
    assert version == "v2"
    want = np.zeros(4)
    for block, test in ((b1, t1), (b2, t2), (b3, t2)):  # v3 has no test: the latest (v2)
        for i, ex in enumerate(block.example):
            want[ex] += block.lr[i] * block.q[i] * float(block.phi[i] @ test.phi)
    np.testing.assert_allclose(scores, want, rtol=1e-5)


# -- KNN-Shapley's space ----------------------------------------------------------------------

def test_embedding_unsigns_binary_rows_and_keeps_other_targets() -> None:
    binary = _block("FEATURISATION", example=[0, 1, 2], step=[0, 1, 2],
                    target=[1.0, 0.0, 1.0])
    feats, y, ex, is_binary = sc.embedding_of(_model(binary, n=3),
                                               sc.TestGradient("v1", "p", np.zeros(K), ""))
    assert is_binary and ex.tolist() == [0, 1, 2] and y.tolist() == [1.0, 0.0, 1.0]
    np.testing.assert_array_equal(feats, binary.phi * np.array([[1], [-1], [1]]))
    multi = _block("FEATURISATION", example=[0, 1], step=[0, 1], target=[2.0, 0.0])
    feats, _, _, is_binary = sc.embedding_of(_model(multi, n=2),
                                             sc.TestGradient("v1", "p", np.zeros(K), ""))
    assert not is_binary
    np.testing.assert_array_equal(feats, multi.phi)


def test_embedding_without_labels_is_named() -> None:
    block = _block("FEATURISATION", example=[0, 1], step=[0, 1], target=[1.0, float("nan")])
    with pytest.raises(AttributionError, match="KNN-Shapley needs labels"):
        sc.embedding_of(_model(block, n=2), sc.TestGradient("v1", "p", np.zeros(K), ""))


# -- answers ----------------------------------------------------------------------------------

def _result(scores: list[float]) -> sc.Result:
    return sc.Result("influence", "v1", np.array(scores), _model(_block(), n=len(scores)))


def test_ranked_takes_one_sign_strongest_first_and_never_zero() -> None:
    r = _result([0.5, -2.0, 0.0, 3.0, -0.1, 0.4])
    assert [(e.row, s) for e, s in r.ranked(10, +1)] == [(3, 3.0), (0, 0.5), (5, 0.4)]
    assert [(e.row, s) for e, s in r.ranked(1, -1)] == [(1, -2.0)]
    assert [e.row for e, _ in r.ranked(2, -1)] == [1, 4]
    assert _result([0.0, 0.0]).ranked(3, +1) == []


def test_top_is_largest_magnitude_of_either_sign() -> None:
    r = _result([0.5, -2.0, 0.0, 3.0])
    assert [(e.row, s) for e, s in r.top(3)] == [(3, 3.0), (1, -2.0), (0, 0.5)]
    assert [e.row for e, _ in r.top(10)] == [3, 1, 0, 2]
    assert r.top(0) == []


def test_groups_sum_scores_per_source_file_and_op_largest_magnitude_first() -> None:
    r = _result([1.0, -4.0, 2.0, 0.5])
    r.model.examples[0].sources.append(sc.SourceRow("s9", "file9.csv", "node-0", 0))
    graph = SimpleNamespace(op=lambda o: SimpleNamespace(op_name=f"name-{o}"))
    assert r.groups("source", graph) == [("s1", "file1.csv", -3.5, 2), ("s0", "file0.csv", 3.0, 2),
                                         ("s9", "file9.csv", 1.0, 1)]
    assert r.groups("source_file", graph)[0] == ("file1.csv", "file1.csv", -3.5, 2)
    assert r.groups("op", graph) == [("op1", "name-op1", -4.0, 1), ("op2", "name-op2", 2.0, 1),
                                     ("op0", "name-op0", 1.5, 2)]


def test_the_default_method_is_tracin_only_for_a_one_pass_learner() -> None:
    def model(uses: list[int], lr: float = 0.1, n: int = 4) -> sc.Model:
        block = _block("TRAINING_STEP", example=uses, step=list(range(len(uses))))
        block.lr[:] = lr
        return _model(block, n=n)

    assert sc.default_method(model([0, 1, 2, 3])) == "tracin"  # each example once
    assert sc.default_method(model([0, 1, 2, 3, 0, 1])) == "tracin"  # 1.5 uses: the edge
    assert sc.default_method(model([0, 1, 2, 3, 0, 1, 2])) == "influence"  # 1.75
    assert sc.default_method(model([0, 1, 2, 3], lr=0.0)) == "influence"  # no steps taken
    assert sc.default_method(_model(_block("FEATURISATION"), n=4)) == "influence"
    empty = sc.Model("clf", rows=0, blocks=[], examples=[], versions=[])
    assert sc.default_method(empty) == "influence"


def test_a_test_gradient_is_a_value() -> None:
    t = sc.TestGradient("v1", "p", np.zeros(K), "")
    with pytest.raises(AttributeError):
        t.version = "v2"  # type: ignore[misc]


@pytest.mark.parametrize("seed", range(5))
def test_top_k_is_the_k_largest_magnitudes_for_any_k(seed: int) -> None:
    scores = np.random.default_rng(seed).normal(size=40)
    r = _result(scores.tolist())
    order = np.argsort(-np.abs(scores), kind="stable")
    for k in range(1, 12):
        assert [e.row for e, _ in r.top(k)] == order[:k].tolist(), k
        signed = np.flatnonzero(scores > 0)[np.argsort(-scores[scores > 0], kind="stable")]
        assert [e.row for e, _ in r.ranked(k, +1)] == signed[:k].tolist(), k


def test_a_result_has_no_damping_unless_influence_set_one() -> None:
    r = _result([1.0])
    assert r.damping == 0.0 and r.damping_source == ""


def test_one_example_used_twice_is_not_one_pass() -> None:
    block = _block("TRAINING_STEP", example=[0, 0], step=[0, 1])
    assert sc.default_method(_model(block, n=1)) == "influence"
    once = _block("TRAINING_STEP", example=[0], step=[0])
    assert sc.default_method(_model(once, n=1)) == "tracin"


def test_source_rows_are_values() -> None:
    row = sc.SourceRow("s", "u", "n", 1)
    assert row == sc.SourceRow("s", "u", "n", 1) and hash(row) == hash(sc.SourceRow("s", "u",
                                                                                   "n", 1))
    with pytest.raises(AttributeError):
        row.row = 2  # type: ignore[misc]
