"""The row-map contract, run over every op in the registry (NumPy and torch): for each
registered function, one example call (tests/support/op_examples.py) on tracked inputs; every
output row's resolved lineage must hold each input row whose change changes that output
row (found by brute force: the same call on plain inputs with one row perturbed at a
time, row ids carried as data). Ops marked as not recorded (data-independent results,
metadata) must emit nothing. An op without a working example fails: a newly registered op
cannot skip the contract."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from support.lineage_oracle import Recorder
from support.op_examples import DEFAULT_TRIALS, EXAMPLES, UNRECORDED

from headwater.producers.tracking import TrackedArray, registry
from headwater.producers.tracking.array import UNTRACKED as NUMPY_UNTRACKED

torch = pytest.importorskip("torch")
from headwater.producers.tracking.torch import TrackedTensor, track_tensor  # noqa: E402
from headwater.producers.tracking.torch import tensor as torch_core  # noqa: E402

SEED = 7
ROWS = 4


def _ops(framework: str) -> list[tuple[str, Any]]:
    rules = registry.load(framework)
    names = registry.NAMES[framework]
    seen: dict[str, Any] = {}
    for f in rules:
        seen.setdefault(names[f], f)
    return sorted(seen.items())


NUMPY_OPS = _ops("numpy")
TORCH_OPS = _ops("torch")


class Inputs:
    """The example's arguments: tracked (recording) or plain (perturbing) inputs."""

    def __init__(self, framework: str, rec: Recorder | None, perturb: tuple[str, int] | None):
        rng = np.random.default_rng(SEED)
        values = {"x": rng.uniform(0.5, 1.5, (ROWS, 3)), "y": rng.uniform(0.5, 1.5, (ROWS, 3)),
                  "v": rng.uniform(0.5, 1.5, (ROWS,))}
        if perturb is not None:
            name, row = perturb
            values[name] = values[name].copy()
            values[name][row] = values[name][row] * 1.37 + 0.11
        self.framework = framework
        self.used: set[str] = set()
        self._values = values
        self._made: dict[str, Any] = {}
        self._rec = rec
        self.i = np.array([2, 0, 3, 1])
        self.m = np.array([[True, False, True]] * 2 + [[False, True, False]] * 2)
        self.w = rng.uniform(-1.0, 1.0, (3, 3))
        if framework == "torch":
            self.i, self.m, self.w = (torch.as_tensor(self.i), torch.as_tensor(self.m),
                                      torch.as_tensor(self.w))

    def __getattr__(self, name: str) -> Any:
        if name not in ("x", "y", "v"):
            raise AttributeError(name)
        if name not in self._made:
            self.used.add(name)
            value = self._values[name]
            if self._rec is not None:
                self._made[name] = self._rec.source(value, name)
            elif self.framework == "torch":
                self._made[name] = torch.as_tensor(value)
            else:
                self._made[name] = value.copy()
        return self._made[name]


class TorchRecorder(Recorder):
    def source(self, values: Any, node_id: str) -> Any:
        t = track_tensor(self.tracker, torch.as_tensor(values), node_id)
        self.sources[node_id] = len(values)
        return t


def _flat(result: Any) -> list[Any]:
    if isinstance(result, (tuple, list)):
        return [o for r in result for o in _flat(r)]
    return [result]


def _tracked(o: Any) -> bool:
    return isinstance(o, (TrackedArray, TrackedTensor)) and o.tracker is not None


def _plain(o: Any) -> np.ndarray | None:
    if isinstance(o, torch.Tensor):
        with torch_core.NoSubclass():
            o = o.detach().cpu()
            return (o.float() if o.dtype == torch.bfloat16 else o).numpy()
    if isinstance(o, (np.ndarray, np.generic)):
        return np.asarray(o)
    return None


def _call(framework: str, example: Callable[[Any, Any], Any], f: Any, rec: Recorder | None,
          perturb: tuple[str, int] | None = None) -> tuple[Any, Inputs]:
    a = Inputs(framework, rec, perturb)
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return example(a, f), a


def _example(framework: str, name: str, f: Any,
             recorded: bool) -> Callable[[Any, Any], Any] | None:
    """The op's example: explicit, else the first default trial giving what the op's kind
    should give (a tracked output, or for unrecorded ops any result)."""
    keys = (name,) if framework == "numpy" else (name, name.rsplit(".", 1)[-1])
    for key in keys:
        if key in EXAMPLES:
            return EXAMPLES[key]
    rec = Recorder() if framework == "numpy" else TorchRecorder()
    for example in DEFAULT_TRIALS:
        try:
            result, _ = _call(framework, example, f, rec)
        except Exception:  # noqa: BLE001 - a trial that does not fit this op's signature
            continue
        if not recorded or any(_tracked(o) for o in _flat(result)):
            return example
    pytest.fail(f"{name}: no example in tests/support/op_examples.py and no default trial fits")


def _check(framework: str, name: str, f: Any) -> None:
    rules = registry.RULES[framework]
    rule = rules[f]
    unrecorded = (rule is NUMPY_UNTRACKED or rule in (torch_core.PASS, torch_core.UNTRACKED)
                  or name in UNRECORDED)
    example = _example(framework, name, f, not unrecorded)
    if example is None:  # listed as not runnable here (no GPU, autograd plumbing)
        return
    rec = Recorder() if framework == "numpy" else TorchRecorder()
    result, used = _call(framework, example, f, rec)
    outs = _flat(result)
    if unrecorded:  # the example may record ops of its own making the input
        assert all(e.op_name != name for e in rec.events), f"{name} was recorded"
        return
    tracked = [(k, o) for k, o in enumerate(outs) if _tracked(o)]
    assert tracked, f"{name}: the example gives no tracked output"
    resolved = {k: rec.resolve(o) for k, o in tracked}
    base, _ = _call(framework, example, f, None)
    base_outs = [_plain(o) for o in _flat(base)]
    for source in sorted(used.used):
        for row in range(ROWS):
            moved, _ = _call(framework, example, f, None, (source, row))
            moved_outs = [_plain(o) for o in _flat(moved)]
            for k, _ in tracked:
                before, after = base_outs[k], moved_outs[k]
                if before is None or after is None or before.shape != after.shape:
                    continue  # a data-dependent shape (nonzero, masked_select)
                b = before.reshape(len(before), -1) if before.ndim else before.reshape(1, 1)
                c = after.reshape(len(after), -1) if after.ndim else after.reshape(1, 1)
                for r in range(len(b)):
                    if not np.array_equal(b[r], c[r], equal_nan=True):
                        assert (source, row) in resolved[k][r], (
                            f"{name}: output {k} row {r} changes with {source}[{row}] but its "
                            f"row map resolves to {sorted(resolved[k][r])}")


@pytest.mark.parametrize(("name", "f"), NUMPY_OPS, ids=[n for n, _ in NUMPY_OPS])
def test_numpy_op_row_map(name: str, f: Any) -> None:
    _check("numpy", name, f)


@pytest.mark.parametrize(("name", "f"), TORCH_OPS, ids=[n for n, _ in TORCH_OPS])
def test_torch_op_row_map(name: str, f: Any) -> None:
    _check("torch", name, f)


def test_the_contract_covers_every_registered_op() -> None:
    """The parametrisation is the registry: every function with a rule is one case."""
    for framework, ops in (("numpy", NUMPY_OPS), ("torch", TORCH_OPS)):
        names = registry.NAMES[framework]
        assert {names[f] for f in registry.RULES[framework]} == {n for n, _ in ops}
