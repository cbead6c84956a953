"""Per-producer Ed25519 keys and the chain heads producers signed with them (store I/O).

A producer's key is registered once (Compliance.RegisterProducerKey, role admin); the
producer then signs its own chain head — the seq and hash its EnvelopeBuilder computed —
and sends it (Compliance.AttestHead). The head is accepted only when the signature verifies
with the registered key and the stored event at that seq has that hash; it is kept in
`head_attestations` and appended to the witness. `audit verify` re-checks every kept
attestation, so `producer_id` stops being an unsigned string up to the attested seq.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from headwater.errors import ConfigError, RequestError
from headwater.query_service.compliance.signing import _public_from_pem, key_id
from headwater.query_service.compliance.witness import (
    Checkpoint,
    Trusted,
    check_witness,
    signature_problem,
)
from headwater.query_service.tables import Reader
from headwater.stream_processors.store import Store

MAX_ID = 256


class KeyConflict(RequestError):
    """The producer already has a different registered key."""


class AttestationRefused(RequestError):
    """A signed head that does not verify, or that the store does not hold."""


@dataclass(frozen=True)
class ProducerKey:
    producer_id: str
    key_id: str
    key: Ed25519PublicKey


MAX_PEM = 4096


def parse_key(pem: str) -> Ed25519PublicKey:
    if len(pem) > MAX_PEM:
        raise RequestError(f"public_key_pem is {len(pem)} characters; an Ed25519 PEM is "
                           f"about 113 (at most {MAX_PEM} accepted)")
    try:
        return _public_from_pem(pem.encode(), "public_key_pem")
    except ConfigError as exc:
        raise RequestError(str(exc)) from None


def registered_keys(reader: Reader) -> dict[str, ProducerKey]:
    """producer id -> its registered key (the first registered; later ones are refused)."""
    out: dict[str, ProducerKey] = {}
    for producer, kid, pem in reader.query(
            "SELECT producer_id, key_id, public_key_pem FROM producer_keys "
            "ORDER BY registered_at"):
        if producer not in out:
            out[producer] = ProducerKey(producer, kid, parse_key(pem))
    return out


def trusted_keys(keys: dict[str, ProducerKey]) -> dict[str, Trusted]:
    """Each registered key, trusted only for its own producer's heads."""
    return {k.key_id: Trusted(k.key, k.producer_id) for k in keys.values()}


def register(store: Store, producer_id: str, pem: str, registered_by: str) -> tuple[str, bool]:
    """(key id, created): a new key is stored; the same key again changes nothing."""
    if not producer_id or len(producer_id) > MAX_ID:
        raise RequestError(f"producer_id must be 1..{MAX_ID} characters")
    key = parse_key(pem)
    kid = key_id(key)
    found = registered_keys(store).get(producer_id)
    if found is not None:
        if found.key_id != kid:
            raise KeyConflict(f"producer {producer_id} already has key {found.key_id}; a "
                              "producer keeps one key")
        return kid, False
    store.command("INSERT INTO producer_keys (producer_id, key_id, public_key_pem, "
                  "registered_by) VALUES ({p:String}, {k:String}, {pem:String}, {by:String})",
                  {"p": producer_id, "k": kid, "pem": pem, "by": registered_by})
    return kid, True


def attest(store: Store, head: Checkpoint, received_by: str) -> bool:
    """Keep a producer-signed head after checking it against the key and the store; False
    when this very signed head was kept already."""
    if not head.producer_id or len(head.producer_id) > MAX_ID or not head.seq:
        raise RequestError(f"producer_id (1..{MAX_ID} characters) and seq must be set")
    if len(head.head_hash) != 64 or len(head.signature) > 200 or len(head.written_at) > 64 \
            or len(head.run_id) > MAX_ID:
        raise RequestError("head_hash must be 64 hex digits; signature, written_at and "
                           "run_id must be short")
    key = registered_keys(store).get(head.producer_id)
    if key is None:
        raise AttestationRefused(f"producer {head.producer_id} has no registered key "
                                 "(Compliance.RegisterProducerKey, role admin)")
    why = signature_problem(head, trusted_keys({head.producer_id: key}))
    if why:
        raise AttestationRefused(f"head of {head.producer_id} seq {head.seq}: {why}")
    rows = store.query("SELECT lower(hex(hash)) FROM events FINAL WHERE producer_id = "
                       "{p:String} AND seq = {s:UInt64}", {"p": head.producer_id, "s": head.seq})
    if not rows:
        raise AttestationRefused(f"no stored event of {head.producer_id} at seq {head.seq}")
    if rows[0][0] != head.head_hash.lower():
        raise AttestationRefused(f"the stored event of {head.producer_id} at seq {head.seq} "
                                 f"has hash {rows[0][0][:16]}…, not the attested "
                                 f"{head.head_hash[:16]}…")
    if store.query("SELECT 1 FROM head_attestations WHERE producer_id = {p:String} AND "
                   "seq = {s:UInt64} AND signature = {sig:String} LIMIT 1",
                   {"p": head.producer_id, "s": head.seq, "sig": head.signature}):
        return False  # the same signed head again (a replay): kept once
    store.command(
        "INSERT INTO head_attestations (producer_id, run_id, seq, head_hash, written_at, key_id,"
        " signature, received_by) VALUES ({p:String}, {r:String}, {s:UInt64}, {h:String}, "
        "{w:String}, {k:String}, {sig:String}, {by:String})",
        {"p": head.producer_id, "r": head.run_id, "s": head.seq, "h": head.head_hash.lower(),
         "w": head.written_at, "k": head.key_id, "sig": head.signature, "by": received_by})
    return True


def attestations(reader: Reader) -> list[Checkpoint]:
    """Every kept producer-signed head, as checkpoints."""
    return [Checkpoint(p, r, int(s), h, w, k, sig) for p, r, s, h, w, k, sig in reader.query(
        "SELECT producer_id, run_id, seq, head_hash, written_at, key_id, signature "
        "FROM head_attestations ORDER BY producer_id, seq")]


def stored_heads(reader: Reader, producers: list[str]) -> dict[tuple[str, int], str]:
    """(producer, seq) -> hex hash of every stored event of these producers (one query per
    producer: the SQL service takes scalar parameters only)."""
    return {(p, int(s)): h.lower() for producer in sorted(set(producers))
            for p, s, h in reader.query("SELECT producer_id, seq, hex(hash) FROM events FINAL "
                                        "WHERE producer_id = {p:String}", {"p": producer})}


def signature_states(reader: Reader, producers: list[str]) -> dict:
    """Per producer of the log: its registered key id and the highest seq it signed; the
    failures (kept signed heads that no longer verify or are no longer stored); and every
    registered key as trusted for its own producer (for a witness check). `failed` holds
    the failures as (producer id, seq, message)."""
    keys = registered_keys(reader)
    wanted = set(producers)
    heads = [h for h in attestations(reader) if h.producer_id in wanted]
    stored = stored_heads(reader, producers) if heads else {}
    failed = [(h.producer_id, h.seq, f) for h in heads
              for f in check_witness([h], stored, trusted_keys(keys))]
    last = {p: int(n) for p, n in reader.query(
        "SELECT producer_id, max(seq) FROM events GROUP BY producer_id")}
    states = {p: {"key_id": keys[p].key_id if p in keys else None,
                  "attested_seq": max((h.seq for h in heads if h.producer_id == p), default=0),
                  "last_seq": last.get(p, 0)} for p in sorted(wanted)}
    return {"producers": states, "failures": [f for _, _, f in failed], "failed": failed,
            "trusted": trusted_keys(keys)}
