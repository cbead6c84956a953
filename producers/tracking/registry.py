"""The op registry: one row-map rule per NumPy or torch function, registered by one call
next to the rule.

    @rule("numpy", "sort argsort")
    def _sort(call, outs): ...

    @rule("torch", "index_select", spaces="torch Tensor")
    def _index_select(call, outs): ...

    rule("torch", "norm quantile nanquantile", spaces="torch Tensor")(reduce_at(2))

A rule takes (call, outputs) and returns a Spec (segments, understood, params) for every
output, a list of Specs (one per output), or None (not understood: every output row
depends on all rows of every tracked input); raising NotUnderstood means the same.

Names are looked up in the framework's namespaces (`spaces`: NumPy's `numpy`; torch's
`torch`, `Tensor`, `F` = torch.nn.functional and `linalg`); a name the installed version
lacks is skipped, and the first rule registered for a function wins. `in_place=True` adds
the trailing-underscore variants (`add_`), `properties=True` registers a Tensor property's
getter (`x.T`, `x.data`). The frameworks are imported only when their rules are
registered: this module imports neither NumPy nor torch.

Adding an op: one registration in the module holding rules of its kind (NumPy:
numpy_ops.py, numpy_shapes.py, numpy_moves.py; torch: torch/ops.py, torch/shape_ops.py,
torch/nn_ops.py), and an example in tests/support/op_examples.py (the row-map contract
runs over every registered op).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

Rule = Callable[..., Any]

# framework -> space -> (module, attribute inside it or "", public name prefix)
_SPACES: dict[str, dict[str, tuple[str, str, str]]] = {
    "numpy": {"numpy": ("numpy", "", "numpy"),
              "stride_tricks": ("numpy.lib.stride_tricks", "", "numpy.lib.stride_tricks")},
    "torch": {"torch": ("torch", "", "torch"),
              "Tensor": ("torch", "Tensor", "torch.Tensor"),
              "F": ("torch.nn.functional", "", "torch.nn.functional"),
              "linalg": ("torch.linalg", "", "torch.linalg")},
}
_DEFAULT_SPACES = {"numpy": "numpy", "torch": "torch Tensor"}

# framework -> the modules whose import registers its rules
RULE_MODULES: dict[str, tuple[str, ...]] = {
    "numpy": ("headwater.producers.tracking.numpy_ops",
              "headwater.producers.tracking.numpy_shapes",
              "headwater.producers.tracking.numpy_moves"),
    "torch": ("headwater.producers.tracking.torch",),
}

# framework -> function -> rule, and function -> public op name ("torch.Tensor.add")
RULES: dict[str, dict[Any, Rule]] = {framework: {} for framework in _SPACES}
NAMES: dict[str, dict[Any, str]] = {framework: {} for framework in _SPACES}
# framework -> function -> (precision class, note): what docs/sources.md lists
PRECISION: dict[str, dict[Any, tuple[str, str]]] = {framework: {} for framework in _SPACES}
CLASSES = {
    "exact": "each output row maps to exactly the input rows it holds",
    "aggregate": "some output rows are made from all rows of an input (named in the note); "
                 "recorded as one all-rows reference, which a trace summarises",
    "not understood": "in the case the note names, recorded as depending on all rows "
                      "(understood=False); every function outside the registry is this",
    "not recorded": "the result does not depend on the values (shapes, metadata): untracked",
}


def space(framework: str, name: str) -> Any:
    """A namespace object of a framework (`numpy`, `torch.Tensor`, ...)."""
    module, attr, _ = _SPACES[framework][name]
    obj = importlib.import_module(module)
    return getattr(obj, attr) if attr else obj


def rule(framework: str, names: str, *, spaces: str | None = None, in_place: bool = False,
         properties: bool = False, precision: str = "exact",
         note: str = "") -> Callable[[Rule], Rule]:
    """Register the decorated rule for every `space.name` that exists (names and spaces:
    whitespace-separated). `precision` (a key of CLASSES) and `note` describe its row map
    in docs/sources.md."""
    if precision not in CLASSES:
        raise ValueError(f"precision must be one of {sorted(CLASSES)}; got {precision!r}")
    table, public = RULES[framework], NAMES[framework]
    classes = PRECISION[framework]

    def register(fn: Rule) -> Rule:
        for space_name in (spaces or _DEFAULT_SPACES[framework]).split():
            ns = space(framework, space_name)
            prefix = _SPACES[framework][space_name][2]
            for name in names.split():
                for n in (name, name + "_") if in_place else (name,):
                    f = getattr(ns, n, None)
                    if f is None:
                        continue
                    if properties:
                        f = f.__get__
                    if f not in table:
                        table[f] = fn
                        public.setdefault(f, f"{prefix}.{n}")
                        classes[f] = (precision, note)
        return fn
    return register


def load(framework: str) -> dict[Any, Rule]:
    """The framework's rule table, with every module registering rules imported."""
    for module in RULE_MODULES[framework]:
        importlib.import_module(module)
    return RULES[framework]


def ops_markdown(not_recorded: Callable[[str, Rule], bool]) -> str:
    """The table of docs/sources.md "Ops and their precision": every registered function of
    both frameworks with its class and note (rules for which `not_recorded(framework,
    rule)` holds are "not recorded"). tests/unit/test_ops_doc.py checks the doc against it."""
    lines = ["| op | precision | note |", "|---|---|---|"]
    rows: dict[str, tuple[str, str]] = {}
    for framework in ("numpy", "torch"):
        for f, fn in load(framework).items():
            name = NAMES[framework][f]
            cls, note = PRECISION[framework][f]
            if not_recorded(framework, fn):
                cls, note = "not recorded", ""
            rows.setdefault(name, (cls, note))
    for name in sorted(rows):
        cls, note = rows[name]
        lines.append(f"| `{name}` | {cls} | {note} |")
    return "\n".join(lines) + "\n"
