"""serve's own witness checkpoints: every HEADWATER_WITNESS_INTERVAL_S seconds (and once at
stop) the log is verified and each producer's chain head that moved since the last
checkpoint is signed with HEADWATER_WITNESS_KEY and appended to HEADWATER_WITNESS (a file,
or a `headwater witness serve` URL whose receipts must verify with
HEADWATER_WITNESS_PUBLIC_KEY when that is set), each with an RFC 3161 timestamp from
HEADWATER_WITNESS_TSA_URL when that is set — what
`headwater audit checkpoint` does, without an operator's cron. While the log has problems
nothing is written (a checkpoint would anchor a broken chain); the reason is logged.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from headwater.errors import ConfigError, HeadwaterError
from headwater.logs import status
from headwater.query_service.compliance.config import ReportSettings
from headwater.query_service.compliance.log_reader import verify_stored_log
from headwater.query_service.compliance.signing import key_id, load_private_key, load_public_key
from headwater.query_service.compliance.timestamps import stamp
from headwater.query_service.compliance.witness import Witness, checkpoints
from headwater.query_service.compliance.witness_client import open_witness

DEFAULT_INTERVAL_S = 300.0


class PeriodicCheckpoints:
    """A thread appending signed checkpoints of the moved chain heads to a witness."""

    def __init__(self, store: Any, witness: Witness, key: Ed25519PrivateKey,
                 interval_s: float, tsa_url: str | None = None) -> None:
        self._store, self._witness, self._key = store, witness, key
        self._tsa_url = tsa_url  # RFC 3161: each checkpoint timestamped when set
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="witness-checkpoints",
                                        daemon=True)
        kid = key_id(key.public_key())
        try:  # heads this key already checkpointed (a restart appends only what moved)
            known = [c for c in witness.read() if c.key_id == kid]
        except ConfigError:
            known = []  # no witness file yet
        except HeadwaterError as exc:  # a witness endpoint not answering yet: all heads go
            status(f"headwater serve: witness not read ({exc}); checkpointing every head")
            known = []
        self._last = {(c.producer_id, c.run_id): (c.seq, c.head_hash) for c in known}

    def checkpoint(self) -> int:
        """Verify the log and append one checkpoint per moved head; how many were written."""
        log = verify_stored_log(self._store)
        if not log.ok:
            status(f"headwater serve: no witness checkpoint: the log has {len(log.problems)} "
                   "problem(s) (see `headwater audit verify`)")
            return 0
        now = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
        moved = [c for c in checkpoints(log, self._key, now)
                 if self._last.get((c.producer_id, c.run_id)) != (c.seq, c.head_hash)]
        if moved:
            moved = stamp(moved, self._tsa_url)
            self._witness.append(moved)
            self._last.update({(c.producer_id, c.run_id): (c.seq, c.head_hash)
                               for c in moved})
        return len(moved)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._checkpoint_logged()

    def _checkpoint_logged(self) -> None:
        try:
            self.checkpoint()
        except Exception as exc:  # noqa: BLE001 - a failed round is logged, the next retries
            status(f"headwater serve: witness checkpoint failed: {type(exc).__name__}: {exc}")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, then checkpoint once more (the heads as serve leaves them)."""
        self._stop.set()
        self._thread.join(60)
        self._checkpoint_logged()


def from_settings(store: Any, env: ReportSettings | None = None
                  ) -> PeriodicCheckpoints | None:
    """serve's checkpointer: HEADWATER_WITNESS and HEADWATER_WITNESS_KEY set and
    HEADWATER_WITNESS_INTERVAL_S not 0 (default 300 s); None otherwise. An interval without
    a witness and key is a ConfigError."""
    env = env or ReportSettings()
    interval = DEFAULT_INTERVAL_S if env.witness_interval_s is None else env.witness_interval_s
    if interval < 0:
        raise ConfigError(f"HEADWATER_WITNESS_INTERVAL_S must be >= 0 (0: off), got {interval}")
    if env.witness_interval_s and (env.witness is None or env.witness_key is None):
        raise ConfigError("HEADWATER_WITNESS_INTERVAL_S needs HEADWATER_WITNESS (the file) and "
                          "HEADWATER_WITNESS_KEY (the Ed25519 key that signs checkpoints)")
    if env.witness is None or env.witness_key is None or interval == 0:
        return None
    public = load_public_key(env.witness_public_key) if env.witness_public_key else None
    return PeriodicCheckpoints(store, open_witness(env.witness, public),
                               load_private_key(env.witness_key), interval,
                               env.witness_tsa_url)
