"""RFC 3161 trusted timestamps on witness checkpoints.

With HEADWATER_WITNESS_TSA_URL set, every checkpoint `audit checkpoint` and serve write is
sent, as a SHA-256 message imprint of the signed checkpoint (its signed bytes and its
signature), to that Time-Stamp Authority; the TSA's signed response (TimeStampResp, DER,
base64) is kept in the checkpoint's `timestamp`. `audit verify` with the TSA's root
certificate (HEADWATER_WITNESS_TSA_CA_FILE) checks each token: granted, signed by a
certificate chaining to that root with the timeStamping usage, over exactly this
checkpoint, and its genTime within MAX_SKEW_S of the checkpoint's `written_at` — so the
time a head was checkpointed rests on the TSA's clock, not the operator's.
"""

from __future__ import annotations

import base64
import hashlib
import urllib.error
import urllib.request
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509
from rfc3161_client import (
    HashAlgorithm,
    PKIStatus,
    TimestampRequestBuilder,
    VerificationError,
    VerifierBuilder,
    decode_timestamp_response,
)

from headwater.errors import ConfigError, HeadwaterError
from headwater.query_service.compliance.witness import Checkpoint

MAX_SKEW_S = 600.0  # genTime against written_at


def message(c: Checkpoint) -> bytes:
    """What a checkpoint's timestamp covers: its signed bytes, then its signature."""
    return c.signed_bytes() + c.signature.encode()


def fetch(tsa_url: str, data: bytes, timeout_s: float = 10.0) -> str:
    """A granted TimeStampResp over SHA-256(`data`) from the TSA at `tsa_url`, base64."""
    request = (TimestampRequestBuilder().data(data).hash_algorithm(HashAlgorithm.SHA256)
               .nonce(nonce=True).cert_request(cert_request=True).build())
    http = urllib.request.Request(tsa_url, data=request.as_bytes(), method="POST",
                                  headers={"Content-Type": "application/timestamp-query"})
    try:
        with urllib.request.urlopen(http, timeout=timeout_s) as answer:
            body = answer.read(64 * 1024)
    except (urllib.error.URLError, OSError) as exc:
        raise HeadwaterError(f"time-stamp authority {tsa_url} did not answer: {exc}") from None
    try:
        response = decode_timestamp_response(body)
    except ValueError as exc:
        raise HeadwaterError(f"time-stamp authority {tsa_url} answered no TimeStampResp: "
                             f"{exc}") from None
    if response.status != PKIStatus.GRANTED:
        raise HeadwaterError(f"time-stamp authority {tsa_url} refused: status "
                             f"{response.status} {response.status_string or ''}".strip())
    info = response.tst_info
    if info.message_imprint.message != hashlib.sha256(data).digest() or \
            info.nonce != request.nonce:
        raise HeadwaterError(f"time-stamp authority {tsa_url} answered a token for other "
                             "bytes or another request")
    return base64.b64encode(response.as_bytes()).decode()


def stamp(found: list[Checkpoint], tsa_url: str | None) -> list[Checkpoint]:
    """`found` with a TSA token each (unchanged when no TSA is configured)."""
    if not tsa_url:
        return found
    return [replace(c, timestamp=fetch(tsa_url, message(c))) for c in found]


def load_roots(path: Path) -> list[x509.Certificate]:
    """The TSA root certificate(s) to trust, from a PEM file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"TSA CA file {path} does not exist")
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except ValueError as exc:
        raise ConfigError(f"TSA CA file {path}: no PEM certificate ({exc})") from None


def check_timestamp(c: Checkpoint, roots: list[x509.Certificate]) -> tuple[str | None, str | None]:
    """(the TSA's genTime, why the token fails or is missing); pure apart from crypto."""
    where = f"checkpoint of {c.producer_id} seq {c.seq} ({c.written_at})"
    if not c.timestamp:
        return None, f"{where}: no RFC 3161 timestamp (a TSA CA was given: one is required)"
    try:
        response = decode_timestamp_response(base64.b64decode(c.timestamp, validate=True))
        builder = VerifierBuilder()
        for root in roots:
            builder = builder.add_root_certificate(root)
        builder.build().verify_message(response, message(c))
    except (ValueError, VerificationError) as exc:
        return None, f"{where}: the RFC 3161 timestamp does not verify ({str(exc)[:200]})"
    when = response.tst_info.gen_time
    when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    claimed = datetime.fromisoformat(c.written_at.replace("Z", "+00:00"))
    gap = (when - claimed).total_seconds()
    at = when.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    if abs(gap) > MAX_SKEW_S:
        return at, (f"{where}: the TSA timestamped it at {at}, {gap:+.0f} s from its "
                    f"written_at (at most {MAX_SKEW_S:g} s): written_at is not when it was "
                    "made")
    return at, None
