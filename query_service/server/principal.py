"""Who made a call, as authenticated: the token's name and role, the client certificate's
subject (mTLS), and the peer address. Every write the server records (each ingested
event's `principal` column, a producer key's `registered_by`) carries this string; a forget
request's `requested_by` carries it without the peer (the identity, not the address:
services/unlearning.requester).

Format, fields separated by one space, absent ones left out (see docs/security.md):

    token=trainer-1 role=producer cert=CN=trainer peer=ipv4:127.0.0.1:5555
    unauthenticated peer=ipv4:127.0.0.1:5555                 (no token auth on the server)
    unauthenticated cert=CN=trainer peer=...                 (mTLS without token auth)

`token=` is the name the token file gives the token (`(unnamed)` when it gives none), never
the token. `cert=` is the subject of the client certificate that the TLS handshake verified
(RFC 4514, e.g. `CN=trainer,O=Clinic`). Values are cleaned so the string stays one line of
space-separated `key=value` fields: whitespace becomes `_`, control characters are dropped.

The AuthInterceptor runs each handler with the Principal its token was found to stand for
(`bound`, through a ContextVar: grpc's context carries no attributes); `describe(context)`
reads it inside the handler.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any

import grpc
from cryptography import x509

from headwater.query_service.server.handlers import handler_kind, handler_like

if TYPE_CHECKING:
    from headwater.query_service.server.auth import Principal

_CURRENT: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "headwater_principal", default=None)


def current() -> Principal | None:
    """The token principal of the call being handled; None when the server has no token
    auth (or outside a call)."""
    return _CURRENT.get()


def bound(handler: Any, principal: Principal) -> Any:
    """`handler` (any kind) run with `principal` as `current()`, in a context of its own so
    nothing leaks into the worker thread between calls."""
    kind = handler_kind(handler)
    inner = getattr(handler, kind)

    def fresh() -> contextvars.Context:
        ctx = contextvars.copy_context()
        ctx.run(_CURRENT.set, principal)
        return ctx

    if kind.endswith("unary"):  # one response
        def behaviour(request: Any, context: grpc.ServicerContext) -> Any:
            return fresh().run(inner, request, context)
    else:  # a stream of responses: every step of the generator runs in the same context
        def behaviour(request: Any, context: grpc.ServicerContext) -> Any:
            ctx = fresh()
            responses = ctx.run(inner, request, context)
            while True:
                try:
                    item = ctx.run(next, responses)
                except StopIteration:
                    return
                yield item
    return handler_like(handler, behaviour, handler.request_deserializer)


def _clean(value: str) -> str:
    return "".join("_" if ch.isspace() else ch for ch in value if ch.isprintable() or
                   ch.isspace())


def certificate_subject(context: grpc.ServicerContext) -> str:
    """The verified client certificate's subject (RFC 4514), '' without one."""
    try:
        auth = context.auth_context() or {}
    except Exception:  # noqa: BLE001 - a context without TLS details has no subject
        return ""
    pem = next(iter(auth.get("x509_pem_cert") or ()), b"")
    if pem:
        try:
            return x509.load_pem_x509_certificate(pem).subject.rfc4514_string()
        except Exception:  # noqa: BLE001 - fall back to the common name grpc parsed
            pass
    names = auth.get("x509_common_name") or ()
    return f"CN={names[0].decode(errors='replace')}" if names else ""


def peer(context: grpc.ServicerContext) -> str:
    try:
        return context.peer() or ""
    except Exception:  # noqa: BLE001 - a peer address is informative only
        return ""


def describe(context: grpc.ServicerContext) -> str:
    """The principal string of the call handled in this thread (format above)."""
    principal = current()
    if principal is None:
        fields = ["unauthenticated"]
    else:
        fields = [f"token={_clean(principal.name) or '(unnamed)'}",
                  f"role={principal.role.value}"]
    cert = certificate_subject(context)
    if cert:
        fields.append(f"cert={_clean(cert)}")
    address = peer(context)
    if address:
        fields.append(f"peer={_clean(address)}")
    return " ".join(fields)
