"""How a transport is rebuilt in another process (the publishing worker process): the
importable class and its constructor's arguments, pickled through a pipe, never argv."""

from __future__ import annotations

import importlib
import pickle
from dataclasses import dataclass, field
from typing import Any

from headwater.producers.transports.base import Transport


@dataclass(frozen=True)
class TransportSpec:
    """`factory` ("module:qualname") called with `args` and `kwargs` builds the transport."""

    factory: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Transport:
        module, _, name = self.factory.partition(":")
        target: Any = importlib.import_module(module)
        for part in name.split("."):
            target = getattr(target, part)
        return target(*self.args, **self.kwargs)  # type: ignore[no-any-return]


def spec_of(transport: object) -> TransportSpec | str:
    """The transport's rebuild spec (its `rebuild_spec` attribute), or why there is none."""
    spec = getattr(transport, "rebuild_spec", None)
    kind = type(transport).__name__
    if spec is None:
        return (f"{kind} cannot be rebuilt in another process (it offers no rebuild_spec; "
                "GrpcTransport, KafkaTransport and NullTransport do)")
    if not isinstance(spec, TransportSpec):
        return f"{kind}.rebuild_spec is {type(spec).__name__}, not a TransportSpec"
    try:
        pickle.dumps(spec)
    except Exception as exc:  # noqa: BLE001 - any pickling failure means the same here
        return f"{kind}'s settings cannot be sent to another process ({exc})"
    return spec
