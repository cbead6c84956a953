"""The publishing worker process (`python -m headwater.producers.worker.child CMD REPLY
WAKE`, started by ProcessPublisher): reads messages from the CMD pipe in order, builds
held steps' GradientBatch payloads from the shared-memory ring, publishes every payload
through its own Publisher (the producer's chain, continued), and answers flush and close
on REPLY; a byte on WAKE (never blocking) tells a waiting trainer that slots were freed.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from headwater.producers.envelope import PAYLOAD_FIELDS
from headwater.producers.publisher import Failures, Publisher
from headwater.producers.worker.pipe import read_frame, write_frame
from headwater.producers.worker.ring import StepRing

_PAYLOADS = {t.__name__: t for t in PAYLOAD_FIELDS}


class CaptureBuilder:
    """One TorchCapture's group build, rebuilt here from its settings: layers (name, kind,
    shape, bias), the projection, model id, task, dtype, the torch thread count."""

    def __init__(self, config: dict[str, Any], ring: StepRing) -> None:
        import torch

        from headwater.producers.capture.factored import Layer, Projector
        from headwater.producers.capture.groups import Scale
        from headwater.producers.capture.recorder import Recorder

        torch.set_num_threads(config["threads"])
        self.torch = torch
        layers = [Layer(name, _module(torch, kind), bias, rows, cols, params)
                  for name, kind, bias, rows, cols, params in config["layers"]]
        self.layers = layers
        self.projector = Projector(layers, config["kronecker"], device=torch.device("cpu"))
        self.recorder = Recorder(None, config["model_id"], config["projection"].input_dim,
                                 task=config["task"], dtype=config["dtype"],
                                 projection_spec=config["projection"])
        self.scale = Scale()
        self.ring = ring

    def build(self, steps: list[tuple[Any, ...]]) -> list[Any]:
        """The group's payloads (or each failed step's exception); frees its slots."""
        from headwater.producers.capture.groups import HeldStep, build_group
        from headwater.producers.capture.rescale import OutputGradient

        torch, held = self.torch, []
        for slot, spec, calls, keys, learning_rate, step, version, scale in steps:
            arrays = [torch.from_numpy(a) for a in self.ring.read(slot, spec)]
            inputs: dict[str, list[Any]] = {la.name: [] for la in self.layers}
            deltas: dict[str, list[Any]] = {la.name: [] for la in self.layers}
            for j, i in enumerate(calls):
                inputs[self.layers[i].name].append(arrays[2 * j])
                deltas[self.layers[i].name].append(arrays[2 * j + 1])
            output, grad, labels = arrays[-3:]
            state = OutputGradient(self.recorder.task, labels, output=output, grad=grad)
            held.append(HeldStep((inputs, deltas), state, None, keys, learning_rate, step,
                                 version))
            if self.scale.value is None:
                self.scale.value = scale  # as the trainer's capture had it
        try:
            return build_group(self.recorder, self.projector, self.scale, held, None)
        finally:
            self.ring.free(len(steps))  # read: the payloads hold copies


def _module(torch: Any, kind: tuple[Any, ...]) -> Any:
    """A weightless stand-in (meta device) for a captured layer: what the projector reads
    of it is its type, dtype and convolution settings."""
    dtype = getattr(torch, kind[1])
    if kind[0] == "linear":
        return torch.nn.Linear(kind[2], kind[3], bias=False, device="meta", dtype=dtype)
    _, _, cin, cout, kernel, stride, padding, dilation = kind
    return torch.nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding,
                           dilation=dilation, bias=False, device="meta", dtype=dtype)


class Worker:
    """The child's state: its Publisher, the captures' builders, what failed so far."""

    def __init__(self, reply: int, wake: int) -> None:
        self.reply, self.wake = reply, wake
        self.publisher: Publisher | None = None
        self.captures: dict[int, CaptureBuilder] = {}
        self.rings: list[StepRing] = []
        self.failures = Failures()

    def handle(self, message: tuple[Any, ...]) -> bool:
        """Act on one message; False once closed."""
        kind = message[0]
        if kind == "init":
            self.init(message[1])
        elif kind == "capture":
            _, cid, config, name, slots, slot_bytes = message
            ring = StepRing.attach(name, slots, slot_bytes)
            self.rings.append(ring)
            try:
                self.captures[cid] = CaptureBuilder(config, ring)
            except Exception as exc:  # noqa: BLE001 - raised at the trainer's flush
                self.failures.add(exc)
        elif kind == "steps":
            self.steps(message[1], message[2])
        elif kind == "payload":
            self.publish(_PAYLOADS[message[1]].FromString(message[2]))
        elif kind == "failure":
            self.failures.add(message[1])
        elif kind == "flush":
            if self.publisher is not None:
                try:
                    self.publisher.flush(message[1])
                except Exception as exc:  # noqa: BLE001 - raised at the trainer's flush
                    self.failures.add(exc)
            write_frame(self.reply, ("flushed", *self.failures.take()))
        elif kind == "close":
            self.close()
            return False
        else:
            self.failures.add(f"the publishing process got a message it does not know: "
                              f"{kind!r}")
        return True

    def init(self, settings: dict[str, Any]) -> None:
        try:
            transport = settings["transport"].build()
        except Exception as exc:  # noqa: BLE001 - raised at the trainer's flush
            self.failures.add(f"the transport could not be rebuilt here: "
                              f"{type(exc).__name__}: {exc}")
            return
        self.publisher = Publisher(transport, settings["run_id"], settings["producer_id"])
        self.publisher.envelopes.resume(*settings["head"])

    def steps(self, cid: int, steps: list[tuple[Any, ...]]) -> None:
        builder = self.captures.get(cid)
        if builder is None:
            for _ in steps:
                self.failures.add("a step of a capture whose settings this process could "
                                  "not use (see the error before)")
            return
        try:
            built = builder.build(steps)
        except Exception as exc:  # noqa: BLE001 - the whole group failed
            built = [exc] * len(steps)
        self._woken()
        for payload in built:
            if isinstance(payload, Exception):
                self.failures.add(payload)
            else:
                self.publish(payload)

    def publish(self, payload: Any) -> None:
        if self.publisher is None:
            self.failures.add("no transport in the publishing process (see the error before)")
            return
        try:
            self.publisher.publish(payload)
        except Exception as exc:  # noqa: BLE001 - raised at the trainer's flush
            self.failures.add(exc)

    def _woken(self) -> None:
        """Tell a trainer waiting for a slot to look again (a full pipe already says so)."""
        try:
            os.write(self.wake, b"w")
        except BlockingIOError:
            pass

    def close(self) -> None:
        state = None
        if self.publisher is not None:
            try:
                self.publisher.transport.flush()
            except Exception as exc:  # noqa: BLE001 - raised at the trainer's close
                self.failures.add(exc)
            try:
                self.publisher.transport.close()
            except Exception as exc:  # noqa: BLE001 - raised at the trainer's close
                self.failures.add(exc)
            state = self.publisher.envelopes.head()
        self.captures.clear()
        for ring in self.rings:
            try:
                ring.close()
            except BufferError:  # a view still held: the mapping goes with the process
                pass
        write_frame(self.reply, ("closed", *self.failures.take(), state))


def main(argv: list[str]) -> int:
    cmd, reply, wake = (int(a) for a in argv[1:4])
    os.set_blocking(wake, False)
    worker = Worker(reply, wake)
    with os.fdopen(cmd, "rb") as stream:
        while True:
            message = read_frame(stream)
            if message is None:  # the trainer is gone without closing: nothing to answer
                return 0
            if not worker.handle(message):
                return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
