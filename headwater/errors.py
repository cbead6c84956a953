"""Every error Headwater raises to a caller, in one hierarchy.

Each carries a one-line message fit for a user; the CLI prints a HeadwaterError as that
line (no traceback), and the gRPC services map the families to status codes.

    HeadwaterError (RuntimeError)
    ├── ConfigError                  a setting, file or flag is unusable        -> exit 2
    │   ├── ChannelConfigError       a client's TLS / token settings (also ValueError)
    │   └── ClusterSchemaError       DDL the cluster renderer cannot translate (also ValueError)
    ├── StoreError                   ClickHouse unreachable, or it refused       -> UNAVAILABLE
    │   ├── DataDirLocked            another process holds the chDB directory
    │   └── NoStore                  a read found no store where it was pointed
    ├── PublishError                 the SDK could not get events stored
    ├── InvalidEvent                 an event breaks the v1 contract (also ValueError)
    ├── RequestError                 malformed request (also ValueError)  -> INVALID_ARGUMENT
    │   ├── TargetError              a forget target names nothing usable
    │   ├── BadRowKey                a row key that names no row
    │   ├── SqlRefused               an auditor's statement is not a safe read
    │   ├── RowsNotInTraining        forget rows the model never trained on
    │   ├── AttributionError         an attribution that cannot be answered
    │   │   └── NoTrainingSteps      tracin without training-step gradients -> FAILED_PRECONDITION
    │   └── NotFound                 what was named does not exist              -> NOT_FOUND
    │       ├── UnknownNode          no lineage node with that id (also KeyError)
    │       ├── UnknownRun           no lineage recorded for that run
    │       └── NothingToAttribute   no such prediction / model, or no gradient rows
    │                                (also an AttributionError)
    ├── ReportError                  a compliance report cannot be built
    └── Busy                         a bounded resource is full      -> RESOURCE_EXHAUSTED
        └── SqlBusy                  every SQL slot is taken

    LineageLost (UserWarning)        tracked rows left tracking where NumPy gave no hook
                                     to follow them (e.g. `rng.permutation(x)`)

Pure modules import from here too: it imports nothing.
"""

from __future__ import annotations


class HeadwaterError(RuntimeError):
    """A failure the CLI prints as one line (no traceback)."""


class ConfigError(HeadwaterError):
    """A setting is invalid (bad DSN, bad address, unusable file, ...)."""


class ChannelConfigError(ConfigError, ValueError):
    """A client's TLS or token configuration is unusable (names the setting, never a secret)."""


class ClusterSchemaError(ConfigError, ValueError):
    """A statement the cluster renderer cannot translate faithfully."""


class StoreError(HeadwaterError):
    """ClickHouse could not be reached or refused a statement."""


class DataDirLocked(StoreError):
    """Another process holds the chDB data directory; `pid` and `address` (the gRPC address
    a serve recorded in the lock, None when none) name it."""

    def __init__(self, message: str, *, pid: str = "unknown",
                 address: str | None = None) -> None:
        super().__init__(message)
        self.pid, self.address = pid, address


class NoStore(StoreError):
    """A read found no store where it was pointed (nothing is created by a read)."""


class PublishError(HeadwaterError):
    """Events were not (or not all) acknowledged as stored; the message says which and why."""

    def __init__(self, message: str, failed_event_ids: list[str] | None = None) -> None:
        super().__init__(message)
        self.failed_event_ids = failed_event_ids or []


class InvalidEvent(HeadwaterError, ValueError):
    """The event breaks the contract; the message names the field."""


class RequestError(HeadwaterError, ValueError):
    """What the caller asked for is malformed or cannot be answered as asked."""


class TargetError(RequestError):
    """The forget target names nothing that exists, or is malformed."""


class BadRowKey(RequestError):
    """A row key that cannot name a row (out of range, malformed)."""


class SqlRefused(RequestError):
    """The statement is not a safe read; the message names what was refused."""


class RowsNotInTraining(RequestError):
    """Forget rows that the model's training-row digest does not hold (never trained on, or
    already forgotten: the listener reports ALREADY_APPLIED for the latter); `rows` names
    them (indices into the forget set)."""

    def __init__(self, message: str, rows: object) -> None:
        super().__init__(message)
        self.rows = rows


class AttributionError(RequestError):
    """A request that cannot be answered (unknown prediction, no gradients, bad shape)."""


class NoTrainingSteps(AttributionError):
    """TracIn asked of a model without training-step gradients (FAILED_PRECONDITION)."""


class NotFound(RequestError):
    """What the request names does not exist."""


class UnknownNode(NotFound, KeyError):
    """No lineage node with that id."""


class UnknownRun(NotFound):
    """No lineage (source or op) was recorded for this run id."""


class NothingToAttribute(NotFound, AttributionError):
    """The prediction or model named does not exist, or has no gradient rows to score."""


class ReportError(HeadwaterError):
    """The report cannot be built (unknown model or version)."""


class Busy(HeadwaterError):
    """A bounded resource is full; the caller should retry later."""


class SqlBusy(Busy):
    """Every SQL slot is taken."""


class LineageLost(UserWarning):
    """Tracked rows were copied into an untracked result by code the tracker cannot follow
    (`rng.permutation(x)`): the result has no lineage; a warning, since nothing is wrong yet."""
