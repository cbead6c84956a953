"""TorchCapture's CURVATURE factors: the full softmax Gauss-Newton, in the same projected
coordinates as its FEATURISATION rows, in both capture modes; none for binary models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headwater.producers.capture.torch import TorchCapture
from headwater.v1 import events_pb2


def mlp(out: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, out))


@pytest.mark.parametrize("mode,k", [("dense", 512), ("factored", 512), ("dense", 16),
                                    ("factored", 16)])
def test_label_factor_is_the_margin_gradient_scaled(mode: str, k: int) -> None:
    """∇ log p_y = (1 − p_y) ∇ margin_y: the label's factor row, rescaled, is φ itself."""
    cap = TorchCapture([].append, mlp(), "m", mode=mode, k=k)
    x = torch.randn(7, 5)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2])
    phi, weights, _ = cap.features(x, y)
    factors, w, classes = cap.curvature_factors(x)
    assert classes == 4 and factors.shape == (7 * 4, phi.shape[1])
    p = w.reshape(7, 4)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-9)
    label_rows = factors.reshape(7, 4, -1)[np.arange(7), y.numpy()]
    np.testing.assert_allclose(label_rows, phi * weights.q[:, None].astype(np.float32),
                               rtol=2e-3, atol=1e-5)


def test_factors_sum_to_the_full_gauss_newton_unprojected() -> None:
    model = mlp()
    cap = TorchCapture([].append, model, "m", mode="dense", k=512)  # d = 64 <= k: identity
    x = torch.randn(6, 5)
    factors, w, _ = cap.curvature_factors(x)
    got = (factors.astype(np.float64) * w[:, None]).T @ factors.astype(np.float64)
    params = dict(model.named_parameters())
    want = np.zeros_like(got)
    for i in range(len(x)):
        def logits(*flat: torch.Tensor, i: int = i) -> torch.Tensor:
            named = dict(zip(cap.names, flat, strict=True))
            return torch.func.functional_call(model, named, (x[i:i + 1],))[0]
        jac = torch.autograd.functional.jacobian(logits, tuple(params[n] for n in cap.names))
        j = torch.cat([g.reshape(4, -1) for g in jac], 1).double().numpy()
        p = torch.softmax(model(x[i:i + 1])[0], -1).double().detach().numpy()
        want += j.T @ (np.diag(p) - np.outer(p, p)) @ j
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-6)


def test_featurise_publishes_curvature_rows_for_multiclass_only() -> None:
    for out, expected in ((4, [events_pb2.GradientBatch.FEATURISATION,
                               events_pb2.GradientBatch.CURVATURE]),
                          (1, [events_pb2.GradientBatch.FEATURISATION])):
        events: list = []
        cap = TorchCapture(events.append, mlp(out), "m")
        y = torch.tensor([0, 1, 1]) if out == 1 else torch.tensor([0, 3, 2])
        cap.featurise([(torch.randn(3, 5), y,
                        events_pb2.RowKeys(node_ids=["n"], rows=[0, 1, 2]))])
        kinds = [e.kind for e in events if isinstance(e, events_pb2.GradientBatch)]
        assert kinds == expected
