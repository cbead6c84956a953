-- Per-producer Ed25519 keys (registered through Compliance.RegisterProducerKey, role admin)
-- and the chain heads each producer signed with its key (Compliance.AttestHead). A producer
-- keeps one key: a second, different key for the same producer is refused. Plain MergeTree,
-- so nothing collapses; `audit verify` checks every attestation against the key.
CREATE TABLE IF NOT EXISTS producer_keys
(
    producer_id     String,
    key_id          String,
    public_key_pem  String,
    registered_by   String,
    registered_at   DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = MergeTree
ORDER BY (producer_id, registered_at);

CREATE TABLE IF NOT EXISTS head_attestations
(
    producer_id  String,
    run_id       String,
    seq          UInt64,
    head_hash    String,
    written_at   String,
    key_id       String,
    signature    String,
    received_by  String,
    received_at  DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = MergeTree
ORDER BY (producer_id, seq);
