"""Bearer-token authentication and roles for every gRPC call (see docs/security.md).

The token file (HEADWATER_AUTH_TOKENS_FILE) holds SHA-256 digests of tokens, never tokens;
a presented token is hashed and compared with every digest in constant time. The file is
re-read when it changes, so tokens rotate without a restart.

    python -m headwater.query_service.server.auth new-token reader [NAME]   # token + its file line
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import grpc

from headwater.errors import ConfigError
from headwater.producers.transports.channel import file_mode_problem
from headwater.query_service.server.handlers import handler_like
from headwater.query_service.server.principal import bound

log = logging.getLogger(__name__)

TOKENS_FILE_ENV = "HEADWATER_AUTH_TOKENS_FILE"
_V1 = "/headwater.v1."


class Role(str, Enum):
    PRODUCER = "producer"
    UNLEARNER = "unlearner"  # the trainer's unlearning listener: UnlearningApplied only
    READER = "reader"
    AUDITOR = "auditor"
    ADMIN = "admin"


_READER = frozenset({f"{_V1}Lineage/*", f"{_V1}Attribution/*", f"{_V1}Unlearning/Status",
                     f"{_V1}Unlearning/Pending"})
ROLE_METHODS: dict[Role, frozenset[str]] = {
    # a trainer publishes its events and reads the forget requests addressed to its run
    # (and signs its chain heads with its registered key)
    Role.PRODUCER: frozenset({f"{_V1}Ingest/*", f"{_V1}Unlearning/Pending",
                              f"{_V1}Compliance/AttestHead"}),
    # the listener reads its run's requests and publishes their outcomes, nothing else
    Role.UNLEARNER: frozenset({f"{_V1}Ingest/*", f"{_V1}Unlearning/Pending",
                               f"{_V1}Compliance/AttestHead"}),
    Role.READER: _READER,
    Role.AUDITOR: _READER | {f"{_V1}Compliance/VerifyLog", f"{_V1}Compliance/Report",
                             f"{_V1}Query/Sql"},
    Role.ADMIN: frozenset({"*"}),
}
# Which event payloads (Event.payload oneof) each role may publish through Ingest, checked
# per event. `forget_requested` is in no row: only the Unlearning.Forget RPC (admin) records
# it, through the server's own publisher, never through Ingest. Without token auth (loopback
# dev mode) there is no role: every payload but forget_requested is accepted.
_TRAINING_PAYLOADS = frozenset({"source_registered", "op_recorded", "model_version_recorded",
                                "gradient_batch", "prediction_recorded"})
ROLE_PAYLOADS: dict[Role, frozenset[str]] = {
    Role.PRODUCER: _TRAINING_PAYLOADS,
    Role.UNLEARNER: frozenset({"unlearning_applied"}),
    Role.READER: frozenset(),
    Role.AUDITOR: frozenset(),
    Role.ADMIN: _TRAINING_PAYLOADS,
}
UNAUTHENTICATED_PAYLOADS = _TRAINING_PAYLOADS | {"unlearning_applied"}
_ONLY_BY = {  # who records a payload a role was refused, for the error message
    "forget_requested": "forget requests are recorded only by Unlearning.Forget (role admin)",
    "unlearning_applied": "outcomes are published only by the trainer's unlearning listener "
                          "(role unlearner)",
}


def payload_refusal(payload: str | None, role: Role | None) -> str | None:
    """Why `role` (None: no token auth) may not publish an event with this payload through
    Ingest; None when it may. A record without a payload is left to the validator."""
    if not payload:
        return None
    allowed = UNAUTHENTICATED_PAYLOADS if role is None else ROLE_PAYLOADS.get(role, frozenset())
    if payload in allowed:
        return None
    who = "an unauthenticated client" if role is None else f"role {role.value}"
    why = _ONLY_BY.get(payload, f"{who} publishes " + (
        f"only {', '.join(sorted(allowed))}" if allowed else "no events"))
    return f"payload {payload} is not accepted from {who}: {why}"


OPEN_PREFIXES = ("/grpc.health.v1.Health/",)  # probes need no token
ANY_ROLE_PREFIXES = ("/grpc.reflection.",)  # schema discovery: any valid token


def roles_for(method: str) -> list[Role]:
    """The roles allowed to call `method` (a full gRPC path); every role for reflection."""
    if method.startswith(ANY_ROLE_PREFIXES):
        return list(Role)
    service = method.rsplit("/", 1)[0]
    return [role for role, patterns in ROLE_METHODS.items()
            if "*" in patterns or method in patterns or f"{service}/*" in patterns]


def short_name(method: str) -> str:
    """`/headwater.v1.Unlearning/Forget` -> `Unlearning.Forget`."""
    service, _, name = method.lstrip("/").rpartition("/")
    return f"{service.rsplit('.', 1)[-1]}.{name}"


@dataclass(frozen=True)
class Principal:
    """Who a token stands for: its role and an optional name for logs (never the token)."""

    role: Role
    name: str = ""


def hash_token(token: str) -> str:
    """Hex SHA-256 of a token: what the token file stores."""
    return hashlib.sha256(token.encode()).hexdigest()


def _digest(text: str, where: str) -> bytes:
    text = text.strip().lower().removeprefix("sha256:")
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        # the value is not shown: a mistaken file may hold a token instead of its hash
        raise ConfigError(f"{where}: expected the SHA-256 hex digest of a token (64 hex "
                          "characters, optionally prefixed sha256:); the value is not shown")
    return bytes.fromhex(text)


def _role(text: str, where: str) -> Role:
    try:
        return Role(text.strip().lower())
    except ValueError:
        raise ConfigError(f"{where}: unknown role {text.strip()!r}; one of "
                          f"{', '.join(r.value for r in Role)}") from None


def parse_tokens(text: str, source: str = "token file") -> dict[bytes, Principal]:
    """Digest -> principal from the file's text: a JSON object {"<sha256>": "role"} or
    {"<sha256>": {"role": ..., "name": ...}}, or lines `<sha256> <role> [name]` (# comments)."""
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{source}: not valid JSON: {exc.msg} at line {exc.lineno}") \
                from None
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: the JSON must be an object of digest -> role")
        table = {}
        for i, (key, value) in enumerate(data.items(), 1):
            where = f"{source}: entry {i}"
            spec = value if isinstance(value, dict) else {"role": value}
            if not isinstance(spec.get("role"), str):
                raise ConfigError(f"{where}: needs a role string")
            table[_digest(key, where)] = Principal(_role(spec["role"], where),
                                                   str(spec.get("name", "")))
        return table
    table = {}
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"{source}: line {n}"
        if len(fields) not in (2, 3):
            raise ConfigError(f"{where}: expected `<sha256> <role> [name]`, got "
                              f"{len(fields)} field(s); the line is not shown")
        table[_digest(fields[0], where)] = Principal(_role(fields[1], where),
                                                     fields[2] if len(fields) > 2 else "")
    return table


def match(table: dict[bytes, Principal], token: str) -> Principal | None:
    """The principal of `token`, comparing its digest with every entry in constant time."""
    presented = hashlib.sha256(token.encode()).digest()
    found = None
    for digest, principal in table.items():
        if hmac.compare_digest(presented, digest):
            found = principal
    return found


class TokenFile:
    """The token table of a file, re-read (at most once a second) when the file changes
    (content, inode, mode or owner).

    Refused at start and at every re-read: a file group- or world-writable or owned by a
    user other than the server's or root (file_mode_problem). At a re-read, such a file, or
    one deleted or unreadable, fails closed: the table empties, every call is refused
    UNAUTHENTICATED until the file is back, and it is logged. A rewrite that does not parse
    keeps the previous table (a typo must not lock every client out) and is logged."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp: tuple[int, ...] | None = self._stat()
        self._check_mode()
        self.table = self._load()
        self._checked = clock()

    def _stat(self) -> tuple[int, int, int, int, int]:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise ConfigError(f"{TOKENS_FILE_ENV}: cannot read {self.path}: "
                              f"{exc.strerror}") from None
        return st.st_mtime_ns, st.st_size, st.st_ino, st.st_mode, st.st_uid

    def _check_mode(self) -> None:
        problem = file_mode_problem(self.path)
        if problem:
            raise _Untrusted(f"{TOKENS_FILE_ENV}: refused: {problem}")

    def _load(self) -> dict[bytes, Principal]:
        try:
            text = self.path.read_text()
        except OSError as exc:
            raise _Untrusted(f"{TOKENS_FILE_ENV}: cannot read {self.path}: "
                             f"{exc.strerror}") from None
        table = parse_tokens(text, str(self.path))
        if not table:
            log.warning("%s holds no tokens: every call except health checks is refused",
                        self.path)
        return table

    def lookup(self, token: str) -> Principal | None:
        self._refresh()
        return match(self.table, token)

    def _refresh(self) -> None:
        now = self._clock()
        if now - self._checked < 1.0:
            return
        with self._lock:
            self._checked = now
            failure: ConfigError | None
            try:
                stamp: tuple[int, ...] | None = self._stat()
            except ConfigError as exc:  # deleted or unreadable: fail closed
                stamp, failure = None, exc
            else:
                failure = None
            if stamp == self._stamp:
                return
            self._stamp = stamp  # logged once per change, not once a second
            try:
                if failure is not None:
                    raise _Untrusted(str(failure))
                self._check_mode()
                self.table = self._load()
                log.info("token file %s re-read: %d token(s)", self.path, len(self.table))
            except _Untrusted as exc:
                self.table = {}
                log.error("token file refused, every call is refused until it is fixed: %s",
                          exc)
            except ConfigError as exc:
                log.error("token file not re-read, previous tokens stay in force: %s", exc)


class _Untrusted(ConfigError):
    """The token file is gone, unreadable, or its mode or owner lets another user change it."""


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The token of `authorization: Bearer <token>`; '' when the header is malformed."""
    for key, value in metadata or ():
        if key.lower() == "authorization":
            scheme, _, token = str(value).partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else ""
    return None


def decide(method: str, token: str | None, lookup: Callable[[str], Principal | None]
           ) -> tuple[grpc.StatusCode, str] | None:
    """None when the call may proceed, else (status, message). Messages name the roles the
    method needs, never the token."""
    if method.startswith(OPEN_PREFIXES):
        return None
    allowed = roles_for(method)
    needs = f"{short_name(method)} needs role {' or '.join(r.value for r in allowed)}"
    if token is None:
        return (grpc.StatusCode.UNAUTHENTICATED,
                f"no `authorization: Bearer <token>` metadata; {needs} "
                "(set HEADWATER_TOKEN or HEADWATER_TOKEN_FILE)")
    if not token:
        return (grpc.StatusCode.UNAUTHENTICATED,
                f"the authorization metadata must be `Bearer <token>`; {needs}")
    principal = lookup(token)
    if principal is None:
        return grpc.StatusCode.UNAUTHENTICATED, f"unknown or revoked token; {needs}"
    if principal.role not in allowed:
        return (grpc.StatusCode.PERMISSION_DENIED,
                f"{needs}; the token presented has role {principal.role.value}")
    return None


def _refusal(handler: Any, code: grpc.StatusCode, message: str) -> Any:
    """A handler of the same kind as `handler` that only answers `code`."""

    def refuse(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)

    return handler_like(handler, refuse, handler.request_deserializer)


class AuthInterceptor(grpc.ServerInterceptor):
    """Checks the bearer token and role of every call (unary and streaming) before its
    handler runs; health checks stay open."""

    def __init__(self, tokens: TokenFile) -> None:
        self._tokens = tokens

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        token = bearer_token(details.invocation_metadata)
        found: list[Principal | None] = []

        def lookup(presented: str) -> Principal | None:
            found.append(self._tokens.lookup(presented))
            return found[-1]

        refused = decide(details.method, token, lookup)
        if refused is None:
            # the handler learns who called (principal.describe): writes record it
            return bound(handler, found[-1]) if found and found[-1] is not None else handler
        code, message = refused
        log.warning("refused %s: %s", code.name, message)
        return _refusal(handler, code, message)


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def main(argv: list[str]) -> int:
    """`new-token ROLE [NAME]`: print a token (stdout) and its token-file line (stderr)."""
    if len(argv) not in (2, 3) or argv[0] != "new-token":
        print("usage: python -m headwater.query_service.server.auth new-token ROLE [NAME]",
              file=sys.stderr)
        return 2
    try:
        role = _role(argv[1], "ROLE")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    token = new_token()
    print(token)
    name = f" {argv[2]}" if len(argv) == 3 else ""
    print(f"append to {TOKENS_FILE_ENV}: sha256:{hash_token(token)} {role.value}{name}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
