"""The checkpoint hook: a trainer's checkpoints and the rows of every step, so a forget
request can be applied exactly, by replay (headwater.producers.unlearning.replay).

    hook = Checkpoints("ckpt/", model, optimizer, every=50, recipe=Recipe(weight_decay=1e-3))
    for step, rows in enumerate(batches):          # rows: dataset row indices
        rows = listener.keep(rows)
        hook.before_step(step, capture=capture)    # every 50 steps: checkpoint + model version
        ...                                        # the normal training step on rows
        hook.after_step(step, rows)                # which rows this step used, its lr, its time

A checkpoint at step s holds the model and optimiser state *before* step s (torch.save of
both state dicts and the torch RNG state), written atomically to `<dir>/step-<s>.pt`; its
`file://` URI is recorded with the model version (`ModelVersionRecorded.checkpoint_uri`,
with the recipe in the config). The step journal (`steps.jsonl`) and the checkpoint index
(`checkpoints.jsonl`) live next to them, so a restarted trainer can still replay; so a
directory belongs to one training run (a new run needs a new directory).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headwater.producers.unlearning.recipe import Recipe


@dataclass(frozen=True)
class LoggedStep:
    """One training step: its number, the dataset rows it used (in batch order), the
    learning rate of each optimiser parameter group, and the seconds it took."""

    step: int
    rows: np.ndarray
    lrs: tuple[float, ...]
    seconds: float


@dataclass(frozen=True)
class Checkpoint:
    step: int  # the state before this step ran
    uri: str

    @property
    def path(self) -> Path:
        return Path(self.uri.removeprefix("file://"))


class Checkpoints:
    """Writes checkpoints every `every` steps and logs every step's rows (module docstring).
    `model` and `optimizer` are the trainer's own objects: a replay restores into them."""

    def __init__(self, directory: str | os.PathLike[str], model: Any, optimizer: Any, *,
                 every: int = 100, recipe: Recipe | None = None,
                 task: str = "classification") -> None:
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1 (steps between checkpoints); got "
                             f"{every!r}")
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.model, self.optimizer = model, optimizer
        self.every, self.recipe, self.task = every, recipe or Recipe(), task
        self.steps: dict[int, LoggedStep] = {}
        self.checkpoints: dict[int, Checkpoint] = {}
        self._started: float | None = None
        self.replay_step_seconds = 0.0  # measured by the last replay (restore and I/O included)
        self._load_journal()

    # -- the trainer's side --------------------------------------------------------------

    def before_step(self, step: int, *, capture: Any = None,
                    config: dict[str, Any] | None = None) -> str | None:
        """Call before each step: every `every` steps (and at the first) writes a
        checkpoint, and with `capture` records it as a model version (checkpoint_uri, the
        recipe in config). Returns the URI when one was written."""
        self._started = time.perf_counter()
        if step % self.every and self.checkpoints:
            return None
        uri = self.save(step)
        if capture is not None:
            capture.record_version(step=step, checkpoint_uri=uri,
                                   config={**(config or {}), "recipe": self.recipe.as_config()})
        return uri

    def after_step(self, step: int, rows: Any) -> None:
        """Call after each step with the dataset rows it used (empty: nothing trained). A
        step logged again (a trainer resumed from a checkpoint re-runs the steps after it)
        replaces the earlier entry, on disk too (the journal's last line for a step wins)."""
        if not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"step must be an int >= 0; got {step!r}")
        keys = np.asarray(rows, dtype=np.int64).ravel()
        lrs = tuple(float(g["lr"]) for g in self.optimizer.param_groups)
        took = 0.0 if self._started is None else time.perf_counter() - self._started
        self._started = None
        logged = LoggedStep(int(step), keys, lrs, took)
        self.steps[logged.step] = logged
        with open(self.directory / "steps.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": logged.step, "rows": keys.tolist(),
                                "lrs": list(lrs), "seconds": took}) + "\n")

    # -- checkpoints ---------------------------------------------------------------------

    def save(self, step: int, tag: str = "") -> str:
        """Write the model and optimiser state before `step`; returns its file:// URI. A
        checkpoint it replaces at the same step is deleted (it may hold forgotten rows)."""
        import torch

        path = self.directory / f"step-{step}{tag}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "rng": torch.get_rng_state(), "step": int(step)}, tmp)
        os.replace(tmp, path)
        old = self.checkpoints.get(step)
        self.checkpoints[step] = Checkpoint(int(step), f"file://{path}")
        if old is not None and old.path != path:
            old.path.unlink(missing_ok=True)
        self._write_index()
        return self.checkpoints[step].uri

    def restore(self, checkpoint: Checkpoint) -> None:
        """Load a checkpoint into the trainer's model and optimiser (and the torch RNG)."""
        import torch

        state = torch.load(checkpoint.path, weights_only=True)
        if state.get("step") != checkpoint.step:
            raise ValueError(f"checkpoint {checkpoint.uri} holds step {state.get('step')}, "
                             f"the index says {checkpoint.step}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])

    def first_use(self, rows: np.ndarray) -> int | None:
        """The first logged step that used any of `rows` (None: never trained on)."""
        for step in sorted(self.steps):
            if np.isin(self.steps[step].rows, rows).any():
                return step
        return None

    def latest_before(self, step: int) -> Checkpoint | None:
        """The last checkpoint whose state precedes `step` (its step <= `step`)."""
        usable = [s for s in self.checkpoints if s <= step]
        return self.checkpoints[max(usable)] if usable else None

    def seconds_per_step(self) -> float:
        """Seconds a replayed step is expected to take: the mean of the logged training
        steps (the mean, not the median: a replay meets the same checkpoint writes and the
        same competition for the CPU), or what the last replay measured per step when that
        was more (0 before any step was timed)."""
        times = [s.seconds for s in self.steps.values() if s.seconds > 0]
        return max(float(np.mean(times)) if times else 0.0, self.replay_step_seconds)

    # -- the journal on disk ---------------------------------------------------------------

    def _write_index(self) -> None:
        tmp = self.directory / "checkpoints.jsonl.tmp"
        tmp.write_text("".join(json.dumps({"step": c.step, "uri": c.uri}) + "\n"
                               for c in sorted(self.checkpoints.values(),
                                               key=lambda c: c.step)), encoding="utf-8")
        os.replace(tmp, self.directory / "checkpoints.jsonl")

    def _load_journal(self) -> None:
        index = self.directory / "checkpoints.jsonl"
        if index.exists():
            for line in index.read_text(encoding="utf-8").splitlines():
                c = json.loads(line)
                self.checkpoints[int(c["step"])] = Checkpoint(int(c["step"]), str(c["uri"]))
        journal = self.directory / "steps.jsonl"
        if journal.exists():
            for line in journal.read_text(encoding="utf-8").splitlines():
                s = json.loads(line)
                self.steps[int(s["step"])] = LoggedStep(
                    int(s["step"]), np.asarray(s["rows"], dtype=np.int64),
                    tuple(float(v) for v in s["lrs"]), float(s["seconds"]))
