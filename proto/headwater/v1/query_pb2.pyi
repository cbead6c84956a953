from headwater.v1 import events_pb2 as _events_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AttributionMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ATTRIBUTION_METHOD_UNSPECIFIED: _ClassVar[AttributionMethod]
    TRACIN: _ClassVar[AttributionMethod]
    INFLUENCE: _ClassVar[AttributionMethod]

class Aggregation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGGREGATION_UNSPECIFIED: _ClassVar[Aggregation]
    BY_ROW: _ClassVar[Aggregation]
    BY_SOURCE: _ClassVar[Aggregation]
    BY_SOURCE_FILE: _ClassVar[Aggregation]
    BY_OP: _ClassVar[Aggregation]
ATTRIBUTION_METHOD_UNSPECIFIED: AttributionMethod
TRACIN: AttributionMethod
INFLUENCE: AttributionMethod
AGGREGATION_UNSPECIFIED: Aggregation
BY_ROW: Aggregation
BY_SOURCE: Aggregation
BY_SOURCE_FILE: Aggregation
BY_OP: Aggregation

class EventBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, events: _Optional[_Iterable[bytes]] = ...) -> None: ...

class EventAck(_message.Message):
    __slots__ = ("index", "event_id", "status", "error")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATUS_UNSPECIFIED: _ClassVar[EventAck.Status]
        ACCEPTED: _ClassVar[EventAck.Status]
        REJECTED: _ClassVar[EventAck.Status]
    STATUS_UNSPECIFIED: EventAck.Status
    ACCEPTED: EventAck.Status
    REJECTED: EventAck.Status
    INDEX_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    index: int
    event_id: str
    status: EventAck.Status
    error: str
    def __init__(self, index: _Optional[int] = ..., event_id: _Optional[str] = ..., status: _Optional[_Union[EventAck.Status, str]] = ..., error: _Optional[str] = ...) -> None: ...

class PublishResponse(_message.Message):
    __slots__ = ("acks", "accepted", "rejected")
    ACKS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    acks: _containers.RepeatedCompositeFieldContainer[EventAck]
    accepted: int
    rejected: int
    def __init__(self, acks: _Optional[_Iterable[_Union[EventAck, _Mapping]]] = ..., accepted: _Optional[int] = ..., rejected: _Optional[int] = ...) -> None: ...

class GetSourceRequest(_message.Message):
    __slots__ = ("source_id",)
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    source_id: str
    def __init__(self, source_id: _Optional[str] = ...) -> None: ...

class Source(_message.Message):
    __slots__ = ("source_id", "uri", "content_sha256", "row_count", "schema", "format", "size_bytes", "origin", "licence", "node_id", "run_id", "producer_id", "event_id", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    LICENCE_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    source_id: str
    uri: str
    content_sha256: str
    row_count: int
    schema: _containers.RepeatedCompositeFieldContainer[_events_pb2.Column]
    format: str
    size_bytes: int
    origin: str
    licence: str
    node_id: str
    run_id: str
    producer_id: str
    event_id: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, source_id: _Optional[str] = ..., uri: _Optional[str] = ..., content_sha256: _Optional[str] = ..., row_count: _Optional[int] = ..., schema: _Optional[_Iterable[_Union[_events_pb2.Column, _Mapping]]] = ..., format: _Optional[str] = ..., size_bytes: _Optional[int] = ..., origin: _Optional[str] = ..., licence: _Optional[str] = ..., node_id: _Optional[str] = ..., run_id: _Optional[str] = ..., producer_id: _Optional[str] = ..., event_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SourcesRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class SourcesResponse(_message.Message):
    __slots__ = ("sources",)
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    sources: _containers.RepeatedCompositeFieldContainer[Source]
    def __init__(self, sources: _Optional[_Iterable[_Union[Source, _Mapping]]] = ...) -> None: ...

class NodeRequest(_message.Message):
    __slots__ = ("node_id", "run_id")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    run_id: str
    def __init__(self, node_id: _Optional[str] = ..., run_id: _Optional[str] = ...) -> None: ...

class TraceRowsRequest(_message.Message):
    __slots__ = ("rows", "run_id", "expand_aggregates", "page_size", "page_token")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    EXPAND_AGGREGATES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    rows: _events_pb2.RowKeys
    run_id: str
    expand_aggregates: bool
    page_size: int
    page_token: str
    def __init__(self, rows: _Optional[_Union[_events_pb2.RowKeys, _Mapping]] = ..., run_id: _Optional[str] = ..., expand_aggregates: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class SourceRowRef(_message.Message):
    __slots__ = ("source_id", "uri", "row")
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    ROW_FIELD_NUMBER: _ClassVar[int]
    source_id: str
    uri: str
    row: int
    def __init__(self, source_id: _Optional[str] = ..., uri: _Optional[str] = ..., row: _Optional[int] = ...) -> None: ...

class RowTrace(_message.Message):
    __slots__ = ("node_id", "row", "sources", "op_ids", "aggregate_refs")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROW_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    OP_IDS_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_REFS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    row: int
    sources: _containers.RepeatedCompositeFieldContainer[SourceRowRef]
    op_ids: _containers.RepeatedScalarFieldContainer[str]
    aggregate_refs: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, node_id: _Optional[str] = ..., row: _Optional[int] = ..., sources: _Optional[_Iterable[_Union[SourceRowRef, _Mapping]]] = ..., op_ids: _Optional[_Iterable[str]] = ..., aggregate_refs: _Optional[_Iterable[int]] = ...) -> None: ...

class AggregateDependency(_message.Message):
    __slots__ = ("op_id", "op_name", "node_id", "node_rows", "reason", "sources")
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    OP_NAME_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ROWS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    op_id: str
    op_name: str
    node_id: str
    node_rows: int
    reason: str
    sources: _containers.RepeatedCompositeFieldContainer[SourceRowCount]
    def __init__(self, op_id: _Optional[str] = ..., op_name: _Optional[str] = ..., node_id: _Optional[str] = ..., node_rows: _Optional[int] = ..., reason: _Optional[str] = ..., sources: _Optional[_Iterable[_Union[SourceRowCount, _Mapping]]] = ...) -> None: ...

class SourceRowCount(_message.Message):
    __slots__ = ("source_id", "uri", "rows")
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    source_id: str
    uri: str
    rows: int
    def __init__(self, source_id: _Optional[str] = ..., uri: _Optional[str] = ..., rows: _Optional[int] = ...) -> None: ...

class TraceRowsResponse(_message.Message):
    __slots__ = ("traces", "aggregates", "ops", "next_page_token")
    TRACES_FIELD_NUMBER: _ClassVar[int]
    AGGREGATES_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    traces: _containers.RepeatedCompositeFieldContainer[RowTrace]
    aggregates: _containers.RepeatedCompositeFieldContainer[AggregateDependency]
    ops: _containers.RepeatedCompositeFieldContainer[OpInfo]
    next_page_token: str
    def __init__(self, traces: _Optional[_Iterable[_Union[RowTrace, _Mapping]]] = ..., aggregates: _Optional[_Iterable[_Union[AggregateDependency, _Mapping]]] = ..., ops: _Optional[_Iterable[_Union[OpInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "kind", "produced_by_op", "shape", "columns", "source_id", "run_id")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PRODUCED_BY_OP_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    kind: str
    produced_by_op: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    columns: _containers.RepeatedScalarFieldContainer[str]
    source_id: str
    run_id: str
    def __init__(self, node_id: _Optional[str] = ..., kind: _Optional[str] = ..., produced_by_op: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., columns: _Optional[_Iterable[str]] = ..., source_id: _Optional[str] = ..., run_id: _Optional[str] = ...) -> None: ...

class AncestorsResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ...) -> None: ...

class OpInfo(_message.Message):
    __slots__ = ("op_id", "op_name", "params_json", "input_node_ids", "output_node_id", "understood")
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    OP_NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    INPUT_NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    UNDERSTOOD_FIELD_NUMBER: _ClassVar[int]
    op_id: str
    op_name: str
    params_json: str
    input_node_ids: _containers.RepeatedScalarFieldContainer[str]
    output_node_id: str
    understood: bool
    def __init__(self, op_id: _Optional[str] = ..., op_name: _Optional[str] = ..., params_json: _Optional[str] = ..., input_node_ids: _Optional[_Iterable[str]] = ..., output_node_id: _Optional[str] = ..., understood: _Optional[bool] = ...) -> None: ...

class OpsResponse(_message.Message):
    __slots__ = ("ops",)
    OPS_FIELD_NUMBER: _ClassVar[int]
    ops: _containers.RepeatedCompositeFieldContainer[OpInfo]
    def __init__(self, ops: _Optional[_Iterable[_Union[OpInfo, _Mapping]]] = ...) -> None: ...

class TestGradient(_message.Message):
    __slots__ = ("model_id", "model_version", "dim", "dtype", "gradient", "projection")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_FIELD_NUMBER: _ClassVar[int]
    PROJECTION_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    model_version: str
    dim: int
    dtype: _events_pb2.FloatDType
    gradient: bytes
    projection: _events_pb2.Projection
    def __init__(self, model_id: _Optional[str] = ..., model_version: _Optional[str] = ..., dim: _Optional[int] = ..., dtype: _Optional[_Union[_events_pb2.FloatDType, str]] = ..., gradient: _Optional[bytes] = ..., projection: _Optional[_Union[_events_pb2.Projection, _Mapping]] = ...) -> None: ...

class RawFeatures(_message.Message):
    __slots__ = ("model_id", "model_version", "features", "shape")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    model_version: str
    features: bytes
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, model_id: _Optional[str] = ..., model_version: _Optional[str] = ..., features: _Optional[bytes] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class AttributeRequest(_message.Message):
    __slots__ = ("prediction_id", "test_gradient", "raw_features", "method", "top_k", "aggregation", "damping", "run_id", "versions")
    PREDICTION_ID_FIELD_NUMBER: _ClassVar[int]
    TEST_GRADIENT_FIELD_NUMBER: _ClassVar[int]
    RAW_FEATURES_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    DAMPING_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    prediction_id: str
    test_gradient: TestGradient
    raw_features: RawFeatures
    method: AttributionMethod
    top_k: int
    aggregation: Aggregation
    damping: float
    run_id: str
    versions: int
    def __init__(self, prediction_id: _Optional[str] = ..., test_gradient: _Optional[_Union[TestGradient, _Mapping]] = ..., raw_features: _Optional[_Union[RawFeatures, _Mapping]] = ..., method: _Optional[_Union[AttributionMethod, str]] = ..., top_k: _Optional[int] = ..., aggregation: _Optional[_Union[Aggregation, str]] = ..., damping: _Optional[float] = ..., run_id: _Optional[str] = ..., versions: _Optional[int] = ...) -> None: ...

class AttributedRow(_message.Message):
    __slots__ = ("node_id", "row", "score", "sources", "ops")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROW_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    row: int
    score: float
    sources: _containers.RepeatedCompositeFieldContainer[SourceRowRef]
    ops: _containers.RepeatedCompositeFieldContainer[OpInfo]
    def __init__(self, node_id: _Optional[str] = ..., row: _Optional[int] = ..., score: _Optional[float] = ..., sources: _Optional[_Iterable[_Union[SourceRowRef, _Mapping]]] = ..., ops: _Optional[_Iterable[_Union[OpInfo, _Mapping]]] = ...) -> None: ...

class AttributedGroup(_message.Message):
    __slots__ = ("key", "label", "score", "rows")
    KEY_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    key: str
    label: str
    score: float
    rows: int
    def __init__(self, key: _Optional[str] = ..., label: _Optional[str] = ..., score: _Optional[float] = ..., rows: _Optional[int] = ...) -> None: ...

class AttributeResponse(_message.Message):
    __slots__ = ("rows", "groups", "method", "model_version", "damping", "damping_source", "helpful", "harmful")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DAMPING_FIELD_NUMBER: _ClassVar[int]
    DAMPING_SOURCE_FIELD_NUMBER: _ClassVar[int]
    HELPFUL_FIELD_NUMBER: _ClassVar[int]
    HARMFUL_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[AttributedRow]
    groups: _containers.RepeatedCompositeFieldContainer[AttributedGroup]
    method: str
    model_version: str
    damping: float
    damping_source: str
    helpful: _containers.RepeatedCompositeFieldContainer[AttributedRow]
    harmful: _containers.RepeatedCompositeFieldContainer[AttributedRow]
    def __init__(self, rows: _Optional[_Iterable[_Union[AttributedRow, _Mapping]]] = ..., groups: _Optional[_Iterable[_Union[AttributedGroup, _Mapping]]] = ..., method: _Optional[str] = ..., model_version: _Optional[str] = ..., damping: _Optional[float] = ..., damping_source: _Optional[str] = ..., helpful: _Optional[_Iterable[_Union[AttributedRow, _Mapping]]] = ..., harmful: _Optional[_Iterable[_Union[AttributedRow, _Mapping]]] = ...) -> None: ...

class AttributeChunk(_message.Message):
    __slots__ = ("rows", "groups", "method", "model_version", "damping", "total")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DAMPING_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[AttributedRow]
    groups: _containers.RepeatedCompositeFieldContainer[AttributedGroup]
    method: str
    model_version: str
    damping: float
    total: int
    def __init__(self, rows: _Optional[_Iterable[_Union[AttributedRow, _Mapping]]] = ..., groups: _Optional[_Iterable[_Union[AttributedGroup, _Mapping]]] = ..., method: _Optional[str] = ..., model_version: _Optional[str] = ..., damping: _Optional[float] = ..., total: _Optional[int] = ...) -> None: ...

class AttributeBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[AttributeRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[AttributeRequest, _Mapping]]] = ...) -> None: ...

class AttributeBatchResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[AttributeResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[AttributeResponse, _Mapping]]] = ...) -> None: ...

class SelfInfluenceRequest(_message.Message):
    __slots__ = ("model_id", "model_version", "top_k", "method", "run_id")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    model_version: str
    top_k: int
    method: AttributionMethod
    run_id: str
    def __init__(self, model_id: _Optional[str] = ..., model_version: _Optional[str] = ..., top_k: _Optional[int] = ..., method: _Optional[_Union[AttributionMethod, str]] = ..., run_id: _Optional[str] = ...) -> None: ...

class SelfInfluenceResponse(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[AttributedRow]
    def __init__(self, rows: _Optional[_Iterable[_Union[AttributedRow, _Mapping]]] = ...) -> None: ...

class ValueRequest(_message.Message):
    __slots__ = ("prediction_id", "test_gradient", "label", "k_neighbours", "aggregation", "top_k", "run_id")
    PREDICTION_ID_FIELD_NUMBER: _ClassVar[int]
    TEST_GRADIENT_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    K_NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    prediction_id: str
    test_gradient: TestGradient
    label: float
    k_neighbours: int
    aggregation: Aggregation
    top_k: int
    run_id: str
    def __init__(self, prediction_id: _Optional[str] = ..., test_gradient: _Optional[_Union[TestGradient, _Mapping]] = ..., label: _Optional[float] = ..., k_neighbours: _Optional[int] = ..., aggregation: _Optional[_Union[Aggregation, str]] = ..., top_k: _Optional[int] = ..., run_id: _Optional[str] = ...) -> None: ...

class ValueResponse(_message.Message):
    __slots__ = ("rows", "groups")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[AttributedRow]
    groups: _containers.RepeatedCompositeFieldContainer[AttributedGroup]
    def __init__(self, rows: _Optional[_Iterable[_Union[AttributedRow, _Mapping]]] = ..., groups: _Optional[_Iterable[_Union[AttributedGroup, _Mapping]]] = ...) -> None: ...

class PendingRequest(_message.Message):
    __slots__ = ("run_id", "model_id", "node_ids", "include_applied")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_APPLIED_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    model_id: str
    node_ids: _containers.RepeatedScalarFieldContainer[str]
    include_applied: bool
    def __init__(self, run_id: _Optional[str] = ..., model_id: _Optional[str] = ..., node_ids: _Optional[_Iterable[str]] = ..., include_applied: _Optional[bool] = ...) -> None: ...

class PendingForget(_message.Message):
    __slots__ = ("request", "rows", "applied", "requested_at")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_AT_FIELD_NUMBER: _ClassVar[int]
    request: _events_pb2.ForgetRequested
    rows: _events_pb2.RowKeys
    applied: bool
    requested_at: str
    def __init__(self, request: _Optional[_Union[_events_pb2.ForgetRequested, _Mapping]] = ..., rows: _Optional[_Union[_events_pb2.RowKeys, _Mapping]] = ..., applied: _Optional[bool] = ..., requested_at: _Optional[str] = ...) -> None: ...

class PendingResponse(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[PendingForget]
    def __init__(self, requests: _Optional[_Iterable[_Union[PendingForget, _Mapping]]] = ...) -> None: ...

class ForgetRequest(_message.Message):
    __slots__ = ("run_id", "model_id", "target", "reason", "method", "verify_with_retrain")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    VERIFY_WITH_RETRAIN_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    model_id: str
    target: _events_pb2.ForgetTarget
    reason: str
    method: _events_pb2.UnlearningMethod
    verify_with_retrain: bool
    def __init__(self, run_id: _Optional[str] = ..., model_id: _Optional[str] = ..., target: _Optional[_Union[_events_pb2.ForgetTarget, _Mapping]] = ..., reason: _Optional[str] = ..., method: _Optional[_Union[_events_pb2.UnlearningMethod, str]] = ..., verify_with_retrain: _Optional[bool] = ...) -> None: ...

class ForgetResponse(_message.Message):
    __slots__ = ("request_id", "affected", "rows")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    AFFECTED_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    affected: _containers.RepeatedCompositeFieldContainer[_events_pb2.AffectedRows]
    rows: int
    def __init__(self, request_id: _Optional[str] = ..., affected: _Optional[_Iterable[_Union[_events_pb2.AffectedRows, _Mapping]]] = ..., rows: _Optional[int] = ...) -> None: ...

class UnlearningStatusRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class UnlearningStatus(_message.Message):
    __slots__ = ("request_id", "state", "applied")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    state: str
    applied: _events_pb2.UnlearningApplied
    def __init__(self, request_id: _Optional[str] = ..., state: _Optional[str] = ..., applied: _Optional[_Union[_events_pb2.UnlearningApplied, _Mapping]] = ...) -> None: ...

class VerifyLogRequest(_message.Message):
    __slots__ = ("run_id", "recompute_hashes", "check_derived")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RECOMPUTE_HASHES_FIELD_NUMBER: _ClassVar[int]
    CHECK_DERIVED_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    recompute_hashes: bool
    check_derived: bool
    def __init__(self, run_id: _Optional[str] = ..., recompute_hashes: _Optional[bool] = ..., check_derived: _Optional[bool] = ...) -> None: ...

class ChainProblem(_message.Message):
    __slots__ = ("producer_id", "kind", "seq", "detail")
    PRODUCER_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    producer_id: str
    kind: str
    seq: int
    detail: str
    def __init__(self, producer_id: _Optional[str] = ..., kind: _Optional[str] = ..., seq: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...

class ProducerChain(_message.Message):
    __slots__ = ("producer_id", "run_id", "events", "first_seq", "last_seq", "first_emitted_at", "last_emitted_at", "head_hash")
    PRODUCER_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    FIRST_EMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_EMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    producer_id: str
    run_id: str
    events: int
    first_seq: int
    last_seq: int
    first_emitted_at: str
    last_emitted_at: str
    head_hash: str
    def __init__(self, producer_id: _Optional[str] = ..., run_id: _Optional[str] = ..., events: _Optional[int] = ..., first_seq: _Optional[int] = ..., last_seq: _Optional[int] = ..., first_emitted_at: _Optional[str] = ..., last_emitted_at: _Optional[str] = ..., head_hash: _Optional[str] = ...) -> None: ...

class VerifyLogResponse(_message.Message):
    __slots__ = ("ok", "producers", "problems", "events", "first_emitted_at", "last_emitted_at", "notes", "hashes_recomputed", "retention_days", "derived_tables", "excluded_events")
    OK_FIELD_NUMBER: _ClassVar[int]
    PRODUCERS_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    FIRST_EMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_EMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    HASHES_RECOMPUTED_FIELD_NUMBER: _ClassVar[int]
    RETENTION_DAYS_FIELD_NUMBER: _ClassVar[int]
    DERIVED_TABLES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_EVENTS_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    producers: _containers.RepeatedCompositeFieldContainer[ProducerChain]
    problems: _containers.RepeatedCompositeFieldContainer[ChainProblem]
    events: int
    first_emitted_at: str
    last_emitted_at: str
    notes: _containers.RepeatedCompositeFieldContainer[ChainProblem]
    hashes_recomputed: bool
    retention_days: int
    derived_tables: _containers.RepeatedCompositeFieldContainer[DerivedTableCheck]
    excluded_events: _containers.RepeatedCompositeFieldContainer[ExcludedEvent]
    def __init__(self, ok: _Optional[bool] = ..., producers: _Optional[_Iterable[_Union[ProducerChain, _Mapping]]] = ..., problems: _Optional[_Iterable[_Union[ChainProblem, _Mapping]]] = ..., events: _Optional[int] = ..., first_emitted_at: _Optional[str] = ..., last_emitted_at: _Optional[str] = ..., notes: _Optional[_Iterable[_Union[ChainProblem, _Mapping]]] = ..., hashes_recomputed: _Optional[bool] = ..., retention_days: _Optional[int] = ..., derived_tables: _Optional[_Iterable[_Union[DerivedTableCheck, _Mapping]]] = ..., excluded_events: _Optional[_Iterable[_Union[ExcludedEvent, _Mapping]]] = ...) -> None: ...

class DerivedTableCheck(_message.Message):
    __slots__ = ("table", "equal", "rows_stored", "rows_from_events", "detail")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    EQUAL_FIELD_NUMBER: _ClassVar[int]
    ROWS_STORED_FIELD_NUMBER: _ClassVar[int]
    ROWS_FROM_EVENTS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    table: str
    equal: bool
    rows_stored: int
    rows_from_events: int
    detail: str
    def __init__(self, table: _Optional[str] = ..., equal: _Optional[bool] = ..., rows_stored: _Optional[int] = ..., rows_from_events: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...

class ExcludedEvent(_message.Message):
    __slots__ = ("event_id", "reason")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    reason: str
    def __init__(self, event_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RegisterProducerKeyRequest(_message.Message):
    __slots__ = ("producer_id", "public_key_pem")
    PRODUCER_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    producer_id: str
    public_key_pem: str
    def __init__(self, producer_id: _Optional[str] = ..., public_key_pem: _Optional[str] = ...) -> None: ...

class RegisterProducerKeyResponse(_message.Message):
    __slots__ = ("key_id", "created")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    created: bool
    def __init__(self, key_id: _Optional[str] = ..., created: _Optional[bool] = ...) -> None: ...

class AttestHeadRequest(_message.Message):
    __slots__ = ("producer_id", "run_id", "seq", "head_hash", "written_at", "key_id", "signature")
    PRODUCER_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_AT_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    producer_id: str
    run_id: str
    seq: int
    head_hash: str
    written_at: str
    key_id: str
    signature: str
    def __init__(self, producer_id: _Optional[str] = ..., run_id: _Optional[str] = ..., seq: _Optional[int] = ..., head_hash: _Optional[str] = ..., written_at: _Optional[str] = ..., key_id: _Optional[str] = ..., signature: _Optional[str] = ...) -> None: ...

class AttestHeadResponse(_message.Message):
    __slots__ = ("witnessed",)
    WITNESSED_FIELD_NUMBER: _ClassVar[int]
    witnessed: bool
    def __init__(self, witnessed: _Optional[bool] = ...) -> None: ...

class ReportRequest(_message.Message):
    __slots__ = ("model_id", "model_version", "config_json", "recompute_hashes", "max_samples")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    RECOMPUTE_HASHES_FIELD_NUMBER: _ClassVar[int]
    MAX_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    model_version: str
    config_json: str
    recompute_hashes: bool
    max_samples: int
    def __init__(self, model_id: _Optional[str] = ..., model_version: _Optional[str] = ..., config_json: _Optional[str] = ..., recompute_hashes: _Optional[bool] = ..., max_samples: _Optional[int] = ...) -> None: ...

class ReportResponse(_message.Message):
    __slots__ = ("json", "sha256", "signed")
    JSON_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIGNED_FIELD_NUMBER: _ClassVar[int]
    json: str
    sha256: str
    signed: bool
    def __init__(self, json: _Optional[str] = ..., sha256: _Optional[str] = ..., signed: _Optional[bool] = ...) -> None: ...

class SqlRequest(_message.Message):
    __slots__ = ("sql", "parameters", "max_rows")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SQL_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    MAX_ROWS_FIELD_NUMBER: _ClassVar[int]
    sql: str
    parameters: _containers.ScalarMap[str, str]
    max_rows: int
    def __init__(self, sql: _Optional[str] = ..., parameters: _Optional[_Mapping[str, str]] = ..., max_rows: _Optional[int] = ...) -> None: ...

class SqlResponse(_message.Message):
    __slots__ = ("columns", "rows_json", "truncated")
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    ROWS_JSON_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    columns: _containers.RepeatedScalarFieldContainer[str]
    rows_json: str
    truncated: bool
    def __init__(self, columns: _Optional[_Iterable[str]] = ..., rows_json: _Optional[str] = ..., truncated: _Optional[bool] = ...) -> None: ...
