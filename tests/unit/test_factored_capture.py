"""Factored capture (issue 16): φ from the training step's own backward equals the exact
per-sample margin gradient projected with the same Kronecker P, for every loss the step
path rescales; training is unchanged; the projection is recorded and rebuilt exactly."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from headwater.producers.capture.kronecker import Factor, KroneckerProjection, plan_factors
from headwater.producers.capture.rescale import LossMismatch
from headwater.producers.capture.torch import FactoredFallback, TorchCapture
from headwater.v1 import events_pb2

N = 12


def mlp(sizes: tuple[int, ...], bias: bool = True, seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(torch.nn.Linear(a, b, bias=bias))
        if i < len(sizes) - 2:
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers)


def exact(capture: TorchCapture, x: torch.Tensor, y: torch.Tensor,
          dtype: torch.dtype = torch.float64) -> np.ndarray:
    """Per-sample gradients of f, one row at a time (plain autograd), in the capture's
    parameter order."""
    model = copy.deepcopy(capture.model).to(dtype)
    named = dict(model.named_parameters())
    rows = []
    for i in range(len(x)):
        model.zero_grad()
        capture._margin(model(x[i:i + 1].to(dtype)), y[i:i + 1]).sum().backward()
        rows.append(torch.cat([named[n].grad.reshape(-1) for n in capture.names]).numpy())
    return np.stack(rows)


def close(phi: np.ndarray, ref: np.ndarray, rtol: float = 2e-5) -> None:
    """Row by row, relative to the row's norm (rows span many orders of magnitude)."""
    for a, b in zip(phi, ref, strict=True):
        assert np.abs(a - b).max() <= rtol * np.abs(b).max() + 1e-30, (a, b)


def keys(n: int = N) -> events_pb2.RowKeys:
    return events_pb2.RowKeys(node_ids=["batch"], rows=range(n))


def stepped(capture: TorchCapture, sent: list, x: torch.Tensor, y: torch.Tensor, loss,
            lr: float = 0.1) -> tuple[np.ndarray, events_pb2.GradientBatch]:
    with capture.step(x, y, keys(len(x)), learning_rate=lr, step=3):
        loss(capture.model(x), y).backward()
    batch = sent[-1]
    return np.frombuffer(batch.gradients, np.float32).reshape(len(x), batch.dim), batch


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_multiclass_step_equals_exact_projected(bias: bool, reduction: str) -> None:
    model = mlp((6, 9, 7, 4), bias=bias)
    sent: list = []
    capture = TorchCapture(sent.append, model, "m", k=40, seed=5)
    assert capture.mode == "factored" and capture.projection.kind == "kronecker"
    assert [f.bias for f in capture.projection.factors] == [bias] * 3
    x, y = torch.randn(N, 6), torch.randint(0, 4, (N,))
    ref = capture.projection.project(exact(capture, x, y))
    phi, batch = stepped(capture, sent, x, y,
                         lambda z, t: F.cross_entropy(z, t, reduction=reduction))
    close(phi, ref)
    assert batch.learning_rate == pytest.approx(0.1 / N if reduction == "mean" else 0.1)
    assert batch.dim == capture.projection.output_dim <= 40
    close(capture.features(x, y)[0], ref)  # the margin pass (featurise, predictions)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_binary_and_regression_steps(reduction: str) -> None:
    x = torch.randn(N, 5)
    sent: list = []
    binary = TorchCapture(sent.append, mlp((5, 8, 1)), "b", k=20)
    y = (torch.rand(N) > 0.5).float()
    phi, batch = stepped(binary, sent, x, y, lambda z, t: F.binary_cross_entropy_with_logits(
        z.squeeze(1), t, reduction=reduction))
    close(phi, binary.projection.project(exact(binary, x, y)))
    reg = TorchCapture(sent.append, mlp((5, 8, 1)), "r", k=20, task="regression")
    t = torch.randn(N)
    phi, batch = stepped(reg, sent, x, t, lambda z, t: F.mse_loss(z.squeeze(1), t,
                                                                  reduction=reduction))
    close(phi, reg.projection.project(exact(reg, x, t)))
    # F.mse_loss is (f - y)^2: twice the 1/2 (f - y)^2 the weights q = y - f describe
    assert batch.learning_rate == pytest.approx(0.1 * 2 / (N if reduction == "mean" else 1))


def test_confident_predictions_keep_precision() -> None:
    """q = 1 - p_y down to 1e-10 and below: float32's p_y - 1 has no digits left there."""
    model = mlp((6, 9, 4))
    x = torch.randn(N, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
        model[2].weight.mul_(90.0)
        model[2].bias.mul_(90.0)
        margins = TorchCapture(lambda e: None, model, "c", k=30)._margin(model(x), y)
    q = torch.sigmoid(-margins.double())
    assert q.min() < 1e-10 and q.max() > 1e-2, q  # the batch spans confident rows
    sent: list = []
    capture = TorchCapture(sent.append, model, "c", k=30)
    phi, batch = stepped(capture, sent, x, y, F.cross_entropy)
    # float32 rounding of logits ~ 100 alone moves p_j / q by ~1e-5 (float64 reference);
    # the same per-row autograd in float32 agrees to float tolerance
    close(phi, capture.projection.project(exact(capture, x, y, torch.float32)), rtol=2e-5)
    close(phi, capture.projection.project(exact(capture, x, y)), rtol=1e-4)
    np.testing.assert_allclose(batch.loss_weight, q.numpy(), rtol=1e-4)


def test_binary_certain_rows_use_a_margin_pass() -> None:
    """σ(z) rounds to 1: the backward's gradient is exactly 0, the row is recomputed."""
    model = mlp((4, 6, 1))
    with torch.no_grad():
        model[2].bias.fill_(40.0)  # every logit ~ 40: q ~ 4e-18, σ(z) == 1 in float32
    x, y = torch.randn(N, 4), torch.ones(N)
    sent: list = []
    capture = TorchCapture(sent.append, model, "s", k=10)
    phi, _ = stepped(capture, sent, x, y, lambda z, t: F.binary_cross_entropy_with_logits(
        z.squeeze(1), t))
    close(phi, capture.projection.project(exact(capture, x, y)), rtol=1e-5)


def test_training_is_unchanged() -> None:
    """The same parameters after N steps with and without the capture (to 1e-7)."""
    plain, traced = mlp((6, 9, 7, 4)), mlp((6, 9, 7, 4))
    capture = TorchCapture(lambda e: None, traced, "t", k=32)
    opts = [torch.optim.SGD(m.parameters(), lr=0.5) for m in (plain, traced)]
    gen = torch.Generator().manual_seed(1)
    for s in range(20):
        x, y = torch.randn(N, 6, generator=gen), torch.randint(0, 4, (N,), generator=gen)
        for model, opt in zip((plain, traced), opts, strict=True):
            opt.zero_grad()
            if model is traced:
                with capture.step(x, y, keys(), learning_rate=0.5, step=s):
                    F.cross_entropy(model(x), y).backward()
            else:
                F.cross_entropy(model(x), y).backward()
            opt.step()
    for a, b in zip(plain.parameters(), traced.parameters(), strict=True):
        assert (a - b).abs().max() <= 1e-7


def test_a_finished_step_lets_its_graph_go() -> None:
    """Nothing of a step outlives it once its event is out: the output hook is removed at
    the end of the step (it held the output through a cycle the collector cannot see, so
    every step's graph stayed in memory), with or without the background worker."""
    import gc
    import weakref

    from headwater.producers.publisher import BackgroundPublisher, Publisher

    class Drop:
        def send(self, key: str, event_id: str, value: bytes) -> None: ...

        def flush(self, timeout: float | None = None) -> None: ...

        def close(self) -> None: ...

    bg = BackgroundPublisher(Publisher(Drop(), run_id="r"))
    for publish in (lambda e: None, bg):
        model = mlp((6, 9, 4))
        capture = TorchCapture(publish, model, "g", k=24, group=2)
        outputs = []
        for s in range(5):
            x, y = torch.randn(N, 6), torch.randint(0, 4, (N,))
            with capture.step(x, y, keys(), learning_rate=0.1, step=s):
                out = model(x)
                F.cross_entropy(out, y).backward()
            outputs.append(weakref.ref(out))
            del out
        bg.flush()
        gc.collect()  # (the taps' record of the latest step is kept until the next step)
        assert [o() is None for o in outputs[:-1]] == [True] * 4
    bg.close()


def test_an_output_with_hooks_of_its_own_keeps_them() -> None:
    """A model that hooks its own output: both hooks run, φ is the exact one, and after
    the step the model's hook is still there and the capture's is gone."""
    seen: list[int] = []
    outputs: list[torch.Tensor] = []

    class Hooked(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = mlp((5, 7, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.inner(x)
            out.register_hook(lambda g: seen.append(len(g)))
            outputs.append(out)
            return out

    model = Hooked()
    sent: list = []
    capture = TorchCapture(sent.append, model, "h", k=16)
    x, y = torch.randn(N, 5), torch.randint(0, 3, (N,))
    ref = capture.projection.project(exact(capture, x, y))
    seen.clear()
    outputs.clear()
    phi, _ = stepped(capture, sent, x, y, F.cross_entropy)
    close(phi, ref)
    assert seen == [N] and len(outputs[0]._backward_hooks) == 1


def test_inplace_activation_and_a_patched_forward() -> None:
    """A layer output that ReLU(inplace=True) overwrites still gives δ of the layer's own
    output; a forward the trainer patched onto a module still runs and is put back after
    the step; afterwards the model holds nothing of the capture's (it deep-copies)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(inplace=True),
                                torch.nn.Linear(8, 8), torch.nn.ReLU(inplace=True),
                                torch.nn.Linear(8, 3))
    sent: list = []
    capture = TorchCapture(sent.append, model, "i", k=40)
    x, y = torch.randn(N, 5), torch.randint(0, 3, (N,))
    ref = capture.projection.project(exact(capture, x, y))
    calls: list[int] = []
    own = model[2].forward

    def patched(a: torch.Tensor) -> torch.Tensor:
        calls.append(len(a))
        return own(a)

    model[2].forward = patched
    phi, _ = stepped(capture, sent, x, y, F.cross_entropy)
    close(phi, ref)
    assert calls == [N] and model[2].forward is patched
    assert all("forward" not in m.__dict__ for i, m in enumerate(model.modules()) if i != 3)
    del model[2].forward
    copy.deepcopy(model)
    close(capture.features(x, y)[0], ref)  # the margin pass through the same taps


def test_kronecker_project_is_the_kronecker_product() -> None:
    spec = KroneckerProjection(9, (Factor("a", 5, 4, 3, 2, True), Factor("b", 3, 6, 3, 4,
                                                                          False)))
    g = np.random.default_rng(0).standard_normal((3, spec.input_dim))
    blocks, offset = [], 0
    for i, f in enumerate(spec.factors):
        p_rows, p_cols = spec.matrices(i)
        w = f.cols - f.bias
        grad = g[:, offset:offset + f.rows * w].reshape(3, f.rows, w)
        offset += f.rows * w
        if f.bias:
            grad = np.concatenate([grad, g[:, offset:offset + f.rows, None]], 2)
            offset += f.rows
        blocks.append(grad.reshape(3, -1) @ np.kron(p_rows, p_cols).T)
    np.testing.assert_allclose(spec.project(g), np.concatenate(blocks, 1), rtol=1e-5)
    assert np.allclose(spec.matrices(1)[0], np.eye(3))  # k equals the dimension: identity


def test_projection_recorded_and_rebuilt() -> None:
    sent: list = []
    capture = TorchCapture(sent.append, mlp((6, 9, 4)), "m", k=24, seed=7)
    x, y = torch.randn(3, 6), torch.tensor([0, 1, 3])
    capture.capture(x, y, keys(3), learning_rate=0.1)
    event = capture.record_prediction(x[0], label=1)
    msg = sent[-2].projection
    assert msg.kind == events_pb2.Projection.KRONECKER and len(msg.factors) == 2
    assert event.projection == msg  # test gradients are projected the same way
    rebuilt = KroneckerProjection.from_proto(events_pb2.Projection.FromString(
        msg.SerializeToString()))
    assert rebuilt == capture.projection
    msg.factors[0].k_rows = 1
    msg.output_dim = rebuilt.output_dim - rebuilt.factors[0].k_cols * (
        rebuilt.factors[0].k_rows - 1)
    with pytest.raises(ValueError, match="does not match its fields"):
        KroneckerProjection.from_proto(msg)
    phi = np.frombuffer(event.test_gradients, np.float32)[None]
    close(phi, capture.projection.project(exact(capture, x[:1], torch.tensor([1]))))


def test_identity_when_small_and_conv_via_unfold() -> None:
    sent: list = []
    small = TorchCapture(sent.append, mlp((3, 4, 2)), "s", k=100)
    assert small.mode == "factored" and small.projection.kind == "identity"
    x, y = torch.randn(5, 3), torch.randint(0, 2, (5,))
    phi, _ = stepped(small, sent, x, y, F.cross_entropy)
    close(phi, exact(small, x, y))
    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(3, 4, 2, stride=2), torch.nn.Flatten(),
                               torch.nn.Linear(16, 3))
    capture = TorchCapture(sent.append, conv, "c", k=60)
    assert capture.mode == "factored"
    x, y = torch.randn(6, 2, 4, 4), torch.randint(0, 3, (6,))
    phi, _ = stepped(capture, sent, x, y, F.cross_entropy)
    close(phi, capture.projection.project(exact(capture, x, y)))


def test_unsupported_layers_fall_back_by_name() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.LayerNorm(6),
                                torch.nn.Linear(6, 3))
    with pytest.warns(FactoredFallback, match=r"1 \(LayerNorm\)"):
        capture = TorchCapture(lambda e: None, model, "m", k=20)
    assert capture.mode == "dense"
    with pytest.raises(ValueError, match=r"cannot take 1 \(LayerNorm\).*'dense'"):
        TorchCapture(lambda e: None, model, "m", k=20, mode="factored")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        last = TorchCapture(lambda e: None, model, "m", k=20, parameters="last_layer")
    assert last.mode == "factored"
    grouped = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3, groups=2))
    with pytest.raises(ValueError, match="groups=2"):
        TorchCapture(lambda e: None, grouped, "g", k=4, mode="factored")


def test_dense_mode_step_matches_its_own_projection() -> None:
    model = mlp((5, 7, 3))
    sent: list = []
    capture = TorchCapture(sent.append, model, "d", k=16, mode="dense")
    x, y = torch.randn(N, 5), torch.randint(0, 3, (N,))
    phi, batch = stepped(capture, sent, x, y, F.cross_entropy)
    assert batch.projection.kind == events_pb2.Projection.RADEMACHER
    close(phi, capture.projection.project(exact(capture, x, y)), rtol=1e-4)


def test_step_refuses_what_it_cannot_rescale() -> None:
    model = mlp((5, 7, 3))
    capture = TorchCapture(lambda e: None, model, "m", k=16)
    x, y = torch.randn(N, 5), torch.randint(0, 3, (N,))
    with pytest.raises(LossMismatch, match="label smoothing"):
        with capture.step(x, y, keys(), learning_rate=0.1):
            F.cross_entropy(model(x), y, label_smoothing=0.1).backward()
    with pytest.raises(ValueError, match="ran 2 times"):
        with capture.step(x, y, keys(), learning_rate=0.1):
            (F.cross_entropy(model(x), y) + F.cross_entropy(model(x), y)).backward()
    with pytest.raises(RuntimeError, match="call loss.backward"):
        with capture.step(x, y, keys(), learning_rate=0.1):
            model(x)
    with pytest.raises(ValueError, match="mode must be one of"):
        TorchCapture(lambda e: None, model, "m", mode="fast")


def test_plan_factors_budget() -> None:
    layers = [("0", 512, 785, True), ("2", 512, 513, True), ("4", 10, 513, True)]
    factors = plan_factors(layers, 512)
    assert sum(f.k for f in factors) <= 512
    assert (factors[2].k_rows, factors[2].k_cols) == (10, 17)  # logits kept unprojected
    assert [(f.k_rows, f.k_cols) for f in factors[:2]] == [(19, 9), (19, 9)]  # δ side 2x
    assert plan_factors([("a", 3, 4, True)], 100)[0].k == 12  # fits: exact
    shaped = plan_factors(layers, 512, {"4": (10, 20)})
    assert (shaped[2].k_rows, shaped[2].k_cols) == (10, 20)
    with pytest.raises(ValueError, match="unknown layers"):
        plan_factors(layers, 512, {"9": (1, 1)})
    with pytest.raises(ValueError, match="each needs at least 1"):
        plan_factors(layers, 2)


def test_tracked_tensors_pass_through_without_recorded_capture_maths() -> None:
    """TrackedTensors inside step(): φ as for plain tensors; nothing of the capture is
    recorded as an op (its taps call the layers' own forward; the output hook adds none)."""
    from headwater.producers.tracking import Tracker
    from headwater.producers.tracking.torch import row_keys, track_tensor

    events: list = []
    tracker = Tracker(events.append)
    model = mlp((5, 7, 3))
    sent: list = []
    capture = TorchCapture(sent.append, model, "m", k=16)
    x, y = torch.randn(N, 5), torch.randint(0, 3, (N,))
    xt, yt = track_tensor(tracker, x), track_tensor(tracker, y)
    before = len(events)
    with capture.step(xt, yt, row_keys(xt), learning_rate=0.1):
        F.cross_entropy(model(xt), yt).backward()
    ops = [e.op_name for e in events[before:]]
    assert ops == ["torch.nn.functional.linear", "torch.tanh",
                   "torch.nn.functional.linear", "torch.nn.functional.cross_entropy"], ops
    phi = np.frombuffer(sent[-1].gradients, np.float32).reshape(N, -1)
    close(phi, capture.projection.project(exact(capture, x, y)))


def test_background_worker_builds_the_same_events_and_raises_at_flush() -> None:
    """With a BackgroundPublisher the projection runs on the worker after the first step:
    the same φ as on the trainer's thread; a loss refused on the worker surfaces at flush."""
    from headwater.errors import PublishError
    from headwater.producers.publisher import BackgroundPublisher, Publisher

    class Keep:
        def __init__(self) -> None:
            self.sent: list[bytes] = []

        def send(self, key: str, event_id: str, value: bytes) -> None:
            self.sent.append(value)

        def flush(self, timeout: float | None = None) -> None: ...

        def close(self) -> None: ...

    model, twin = mlp((6, 9, 4)), mlp((6, 9, 4))
    transport, sent = Keep(), []
    bg = BackgroundPublisher(Publisher(transport, run_id="r"))
    worker = TorchCapture(bg, model, "m", k=24)
    inline = TorchCapture(sent.append, twin, "m", k=24)
    gen = torch.Generator().manual_seed(3)
    for s in range(4):
        x, y = torch.randn(N, 6, generator=gen), torch.randint(0, 4, (N,), generator=gen)
        for capture in (worker, inline):
            with capture.step(x, y, keys(), learning_rate=0.1, step=s):
                F.cross_entropy(capture.model(x), y).backward()
            for p in capture.model.parameters():  # the optimiser, right after the block
                p.data.add_(p.grad, alpha=-0.5)
                p.grad = None
    bg.flush()
    events = [events_pb2.Event.FromString(v) for v in transport.sent]
    batches = [e.gradient_batch for e in events if e.HasField("gradient_batch")]
    assert len(batches) == 4
    for mine, theirs in zip(batches, [e for e in sent if hasattr(e, "gradients")], strict=True):
        assert mine.learning_rate == theirs.learning_rate and mine.step == theirs.step
        np.testing.assert_array_equal(np.frombuffer(mine.gradients, np.float32),
                                      np.frombuffer(theirs.gradients, np.float32))
    x, y = torch.randn(N, 6), torch.randint(0, 4, (N,))
    with worker.step(x, y, keys(), learning_rate=0.1):  # accepted here, refused on the worker
        F.cross_entropy(model(x), y, label_smoothing=0.2).backward()
    with pytest.raises(PublishError, match="LossMismatch: .*label smoothing"):
        bg.flush()
    bg.close()


def test_grouped_steps_give_the_same_events_in_order() -> None:
    """Steps held back and projected as groups on the worker (group=3, 9 steps, a version
    recorded mid-group, the trainer refilling one input buffer in place): the same
    GradientBatch values as capture on the trainer's thread, and every event in step order."""
    from headwater.producers.publisher import BackgroundPublisher, Publisher

    class Keep:
        def __init__(self) -> None:
            self.sent: list[bytes] = []

        def send(self, key: str, event_id: str, value: bytes) -> None:
            self.sent.append(value)

        def flush(self, timeout: float | None = None) -> None: ...

        def close(self) -> None: ...

    with pytest.raises(ValueError, match="group must be a positive integer"):
        TorchCapture(lambda e: None, mlp((6, 9, 4)), "m", group=0)
    model, twin = mlp((6, 9, 4)), mlp((6, 9, 4))
    transport, sent = Keep(), []
    bg = BackgroundPublisher(Publisher(transport, run_id="r"))
    worker = TorchCapture(bg, model, "m", k=24, group=3)
    inline = TorchCapture(sent.append, twin, "m", k=24)
    gen = torch.Generator().manual_seed(5)
    buffer = torch.empty(N, 6)
    for s in range(9):
        buffer.copy_(torch.randn(N, 6, generator=gen))
        y = torch.randint(0, 4, (N,), generator=gen)
        for capture in (worker, inline):
            with capture.step(buffer, y, keys(), learning_rate=0.1, step=s):
                F.cross_entropy(capture.model(buffer), y).backward()
            for p in capture.model.parameters():
                p.data.add_(p.grad, alpha=-0.5)
                p.grad = None
            if s == 4:
                capture.record_version(step=s)
    assert len(worker._pending) == 1  # step 8 waits for the flush
    bg.flush()
    events = [events_pb2.Event.FromString(v) for v in transport.sent]
    order = [(e.WhichOneof("payload"), e.gradient_batch.step) for e in events]
    assert order == [("model_version_recorded", 0)] + [("gradient_batch", s) for s in range(5)] \
        + [("model_version_recorded", 0)] + [("gradient_batch", s) for s in (5, 6, 7, 8)]
    theirs = [e for e in sent if isinstance(e, events_pb2.GradientBatch)]
    mine = [e.gradient_batch for e in events if e.HasField("gradient_batch")]
    assert len(mine) == len(theirs) == 9
    for a, b in zip(mine, theirs, strict=True):
        assert (a.model_version, a.learning_rate, list(a.loss_weight), list(a.targets)) == \
            (b.model_version, b.learning_rate, list(b.loss_weight), list(b.targets))
        np.testing.assert_allclose(np.frombuffer(a.gradients, np.float32),
                                   np.frombuffer(b.gradients, np.float32), rtol=1e-5,
                                   atol=1e-7)
    # a loss refused on the worker fails its own step only; the group's others are published
    before = len(transport.sent)
    for s, smoothing in enumerate([0.0, 0.2, 0.0]):
        x, y = torch.randn(N, 6, generator=gen), torch.randint(0, 4, (N,), generator=gen)
        with worker.step(x, y, keys(), learning_rate=0.1, step=20 + s):
            F.cross_entropy(model(x), y, label_smoothing=smoothing).backward()
    from headwater.errors import PublishError

    with pytest.raises(PublishError, match="1 event.*LossMismatch: .*label smoothing"):
        bg.flush()
    steps = [events_pb2.Event.FromString(v).gradient_batch.step
             for v in transport.sent[before:]]
    assert steps == [20, 22]
    bg.close()


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
def test_group_scales_match_each_step_bit_for_bit() -> None:
    """The worker's margins and loss scales for a whole group (group_scales, softmax rows
    stacked) are those loss_scale gives each step alone, bit for bit: mean and sum steps,
    a confident step (q below 1e-10), a step whose every row is certain (no scale), and a
    label-smoothed step refused on its own while the others are kept."""
    from headwater.producers.capture.rescale import (
        OutputGradient,
        correct,
        group_scales,
        loss_scale,
        margins,
    )

    gen = torch.Generator().manual_seed(11)

    def state(scale: float, smoothing: float = 0.0, certain: bool = False) -> OutputGradient:
        z = torch.randn(N, 5, generator=gen) * scale
        y = torch.randint(0, 5, (N,), generator=gen)
        if certain:
            z[torch.arange(N), y] = 1e4  # q = 0 in float64 too
        z.requires_grad_(True)
        F.cross_entropy(z, y, reduction="sum" if scale > 3 else "mean",
                        label_smoothing=smoothing).backward()
        s = OutputGradient("classification", y, output=z.detach())
        assert z.grad is not None
        s.grad, s.label = correct(z.grad, z.detach(), y, "classification")
        return s

    states = [state(1.0), state(4.0), state(30.0), state(1.0, certain=True),
              state(2.0, smoothing=0.2), state(1.0)]
    fs, scales = group_scales(states)
    assert len(fs) == len(scales) == len(states)
    for s, f, c in zip(states, fs, scales, strict=True):
        assert s.output is not None
        alone = margins(s.output.double().numpy(), s.labels.double().numpy(), s.task)
        assert f.tobytes() == alone.tobytes()
        try:
            expected: float | None | LossMismatch = loss_scale(s)[0]
        except LossMismatch as exc:
            expected = exc
        if isinstance(expected, LossMismatch):
            assert isinstance(c, LossMismatch) and str(c) == str(expected)
        else:
            assert c == expected
    assert scales[3] is None and isinstance(scales[4], LossMismatch)
    assert all(isinstance(c, float) for i, c in enumerate(scales) if i not in (3, 4))


def test_a_step_that_raises_publishes_nothing_and_leaves_the_model_as_it_was() -> None:
    """step() is a plain context manager: nothing happens until it is entered; an exception
    inside the block removes the taps and the output hook, publishes nothing and is raised
    unchanged; the next step is captured as usual."""
    sent: list = []
    model = mlp((6, 9, 4))
    capture = TorchCapture(sent.append, model, "raise", k=24)
    capture.record_version(step=0)
    before = len(sent)
    x, y = torch.randn(N, 6), torch.randint(0, 4, (N,))
    unentered = capture.step(x, y, keys(), learning_rate=0.1)
    assert all("forward" not in m.__dict__ for m in model.modules())
    del unentered
    with pytest.raises(KeyError, match="boom"), \
            capture.step(x, y, keys(), learning_rate=0.1):
        out = model(x)
        F.cross_entropy(out, y).backward()
        raise KeyError("boom")
    assert len(sent) == before
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert not out._backward_hooks  # the output hook is gone
    phi, batch = stepped(capture, sent, x, y, F.cross_entropy)
    assert len(sent) == before + 1 and batch.dim == phi.shape[1]


def test_parameter_hash_reads_the_raw_bytes_of_every_dtype() -> None:
    """The same digest as hashing NumPy's bytes (float32), and a bfloat16 model (a dtype
    NumPy lacks) hashes too, changing with its parameters."""
    import hashlib

    model = mlp((5, 8, 3))
    want = hashlib.sha256()
    for name, p in model.named_parameters():
        want.update(name.encode())
        want.update(p.detach().numpy().tobytes())
    assert TorchCapture(lambda e: None, model, "m", k=20).parameter_hash() == want.hexdigest()
    half = mlp((5, 8, 3)).to(torch.bfloat16)
    capture = TorchCapture(lambda e: None, half, "h", k=20)
    before = capture.parameter_hash()
    with torch.no_grad():
        half[0].bias[0] += 1
    assert capture.parameter_hash() != before
