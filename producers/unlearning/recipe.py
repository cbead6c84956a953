"""The trainer's own objective (its recipe): how per-row losses are reduced and how the
parameters are penalised. Recorded with every model version, it fixes what "retrained
without the rows" means, so unlearning targets that optimum and verification retrains it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

REDUCTIONS = ("mean", "sum")


@dataclass(frozen=True)
class Recipe:
    """objective(θ; D) = reduce_{i∈D} ℓ_i(θ) + (weight_decay + l2)/2·|θ|².

    `reduction`: "mean" (torch's default) or "sum" of the per-row losses. `weight_decay`: the
    optimiser's coupled decay (torch SGD / Adam `weight_decay`, which adds wd·θ to the
    gradient; AdamW's decoupled decay has no such objective and is not covered); `l2`: an
    explicit l2/2·|θ|² term the trainer adds to its loss. Both scale with the reduction: a
    mean-loss trainer's optimum on n rows is that of Σℓ + n·(wd + l2)/2·|θ|², so removing rows
    also weakens the penalty (`lam`)."""

    reduction: str = "mean"
    weight_decay: float = 0.0
    l2: float = 0.0

    def __post_init__(self) -> None:
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"recipe reduction must be one of {', '.join(REDUCTIONS)}; got "
                             f"{self.reduction!r}")
        for name in ("weight_decay", "l2"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"recipe {name} must be a finite number >= 0; got {value!r}")

    @property
    def penalty(self) -> float:
        """The coefficient c of c/2·|θ|² next to the reduced loss."""
        return float(self.weight_decay + self.l2)

    def lam(self, rows: int) -> float:
        """λ of the equivalent summed objective Σ_{i∈D} ℓ_i + λ/2·|θ|² on `rows` rows."""
        if rows < 1:
            raise ValueError(f"rows must be >= 1; got {rows}")
        return self.penalty * (rows if self.reduction == "mean" else 1.0)

    def scale(self, rows: int) -> float:
        """The factor taking the summed objective to the trainer's (1/rows for a mean)."""
        return 1.0 / rows if self.reduction == "mean" else 1.0

    def as_config(self) -> dict[str, Any]:
        """The `recipe` entry of a model version's config_json."""
        return asdict(self)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Recipe:
        """The recipe recorded in a model version's config (its `recipe` entry, or the
        config itself); unknown keys are refused, naming them."""
        raw = config.get("recipe", config)
        if not isinstance(raw, dict):
            raise ValueError(f"recipe must be an object; got {type(raw).__name__}")
        extra = set(raw) - {"reduction", "weight_decay", "l2"}
        if extra:
            raise ValueError(f"unknown recipe fields: {', '.join(sorted(extra))}")
        return cls(**raw)
