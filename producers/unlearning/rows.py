"""Rows (x, y) of either framework, and the small helpers every unlearning module uses."""

from __future__ import annotations

from typing import Any

import numpy as np

Rows = tuple[Any, Any]  # (x, y): arrays or tensors with the same number of rows
CHUNK = 4096  # rows per forward pass / Hessian block: bounds memory for large row sets


# -- small helpers ----------------------------------------------------------------------------

def torch_no_grad() -> Any:
    import torch

    return torch.no_grad()


def as_numpy(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def pair(rows: Any, what: str) -> Rows:
    if not isinstance(rows, (tuple, list)) or len(rows) != 2:
        raise TypeError(f"{what} must be a pair (x, y); got {type_name(rows)}")
    return rows[0], rows[1]


def nonempty(xf: Any, xr: Any) -> None:
    if len(xf) == 0:
        raise ValueError("forget is empty: name at least one row to unlearn")
    if len(xr) == 0:
        raise ValueError("retain is empty: forgetting every training row leaves nothing to "
                         "keep; re-initialise the model instead")


def type_name(obj: Any) -> str:
    t = type(obj)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
