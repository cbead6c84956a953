"""Integrity of an evidence report: canonical-JSON content hash and Ed25519 signature.

The hash and the signature cover the canonical JSON (sorted keys, no whitespace, UTF-8)
of the report without its `integrity` block, so any change to any field breaks both.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from headwater.errors import ConfigError
from headwater.producers import head_signing
from headwater.query_service.compliance.model import Integrity, Signature, json_schema

CANONICALIZATION = "json-sorted-keys-compact-utf8"


def canonical_bytes(report: dict[str, Any]) -> bytes:
    """The bytes hashed and signed: the report less `integrity`, canonical JSON."""
    body = {k: v for k, v in report.items() if k != "integrity"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def content_sha256(report: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_bytes(report)).hexdigest()


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from an (unencrypted) PEM file; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"signing key {path} does not exist")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"signing key {path}: not an unencrypted PEM private key "
                          f"({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"signing key {path} is a {type(key).__name__}, not Ed25519")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"public key {path} does not exist")
    return _public_from_pem(path.read_bytes(), str(path))


def _public_from_pem(pem: bytes, where: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{where} is a {type(key).__name__}, not Ed25519")
    return key


def public_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def key_id(key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw public key, 16 hex digits (producers name their keys the same)."""
    return head_signing.key_id(key)


def seal(report: dict[str, Any], key: Ed25519PrivateKey | None,
         unsigned_reason: str = "no signing key configured (--signing-key or "
                                "HEADWATER_SIGNING_KEY)") -> dict[str, Any]:
    """The report with a fresh integrity block: content hash, and a signature if keyed."""
    data = canonical_bytes(report)
    signature = None
    if key is not None:
        public = key.public_key()
        signature = Signature(algorithm="Ed25519", key_id=key_id(public),
                              public_key_pem=public_pem(public),
                              value=base64.b64encode(key.sign(data)).decode())
    integrity = Integrity(canonicalization=CANONICALIZATION,
                          content_sha256=hashlib.sha256(data).hexdigest(), signature=signature,
                          unsigned_reason=None if key is not None else unsigned_reason)
    body = {k: v for k, v in report.items() if k != "integrity"}
    return {**body, "integrity": integrity.model_dump(mode="json")}


@dataclass
class CheckResult:
    """What `check` found: each failed check names what failed; notes are informational."""

    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    content_sha256: str = ""
    key_id: str = ""

    @property
    def ok(self) -> bool:
        return not self.failures


def _schema_errors(report: Any) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(json_schema())
    errors = sorted(validator.iter_errors(report), key=lambda e: list(e.absolute_path))
    return [f"schema: {'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
            for e in errors[:10]]


def check(text: str | bytes, public_key: Ed25519PublicKey | None = None,
          allow_unsigned: bool = False) -> CheckResult:
    """Validate against the schema, recompute the hash, verify the signature with the
    trusted `public_key`. Without one a signed report fails: the key embedded in a report
    proves nothing about who signed it (anyone can change a report and re-sign it)."""
    result = CheckResult()
    try:
        report = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        result.failures.append(f"not JSON: {exc}")
        return result
    if not isinstance(report, dict):
        result.failures.append("not a JSON object")
        return result
    result.failures += _schema_errors(report)
    integrity = report.get("integrity")
    if not isinstance(integrity, dict):
        result.failures.append("integrity: the report has no integrity block")
        return result
    try:
        data = canonical_bytes(report)
    except ValueError as exc:  # NaN or infinity: not valid JSON for the hash
        result.failures.append(f"canonical JSON: {exc}")
        return result
    digest = hashlib.sha256(data).hexdigest()
    result.content_sha256 = digest
    if integrity.get("content_sha256") != digest:
        result.failures.append(f"content hash: the report hashes to {digest}, but its "
                               f"integrity block says {integrity.get('content_sha256')}")
    signature = integrity.get("signature")
    if not isinstance(signature, dict):
        if public_key is not None or not allow_unsigned:
            result.failures.append("signature: the report is unsigned ("
                                   f"{integrity.get('unsigned_reason') or 'no reason given'})")
        return result
    try:
        embedded = _public_from_pem(str(signature.get("public_key_pem", "")).encode(),
                                    "signature.public_key_pem")
        value = base64.b64decode(str(signature.get("value", "")), validate=True)
    except (ConfigError, ValueError) as exc:
        result.failures.append(f"signature: {exc}")
        return result
    result.key_id = key_id(embedded)
    if signature.get("key_id") != result.key_id:
        result.failures.append(f"signature: key_id {signature.get('key_id')} does not match "
                               f"the embedded public key ({result.key_id})")
    if public_key is None:
        result.failures.append(
            f"signature: no trusted public key given (--public-key or "
            f"HEADWATER_REPORT_PUBLIC_KEY); the report is signed by key {result.key_id}, "
            "which proves nothing about who signed it")
    elif key_id(public_key) != result.key_id:
        result.failures.append(f"signature: signed by key {result.key_id}, not by the given "
                               f"public key {key_id(public_key)}")
    try:
        (public_key or embedded).verify(value, data)
    except InvalidSignature:
        result.failures.append("signature: does not verify over the report's content "
                               "(the report was changed after signing, or the signature is "
                               "not of this report)")
    return result


def report_text(sealed: dict[str, Any]) -> str:
    """The file form: indented JSON (the hash is over the canonical form, not these bytes)."""
    return json.dumps(sealed, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
