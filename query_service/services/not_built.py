"""Servicers for capabilities not built yet: every method answers UNIMPLEMENTED, naming
what is missing, instead of the generated "Method not implemented!"."""

from __future__ import annotations

from typing import Any

import grpc


def not_built(base: type, service: str, missing: dict[str, str]) -> Any:
    """An instance of `base` whose listed methods abort with UNIMPLEMENTED and a reason."""

    def method(name: str, reason: str) -> Any:
        def handler(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(grpc.StatusCode.UNIMPLEMENTED,
                          f"{service}.{name} is not built yet: {reason}")

        handler.__name__ = name
        return handler

    attrs = {name: method(name, reason) for name, reason in missing.items()}
    return type(f"NotBuilt{service}", (base,), attrs)()
