import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FloatDType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FLOAT_DTYPE_UNSPECIFIED: _ClassVar[FloatDType]
    FLOAT16: _ClassVar[FloatDType]
    FLOAT32: _ClassVar[FloatDType]
    FLOAT64: _ClassVar[FloatDType]

class UnlearningMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNLEARNING_METHOD_UNSPECIFIED: _ClassVar[UnlearningMethod]
    NEWTON: _ClassVar[UnlearningMethod]
    FINE_TUNE: _ClassVar[UnlearningMethod]
    REPLAY: _ClassVar[UnlearningMethod]
    PARTIAL_REPLAY: _ClassVar[UnlearningMethod]
FLOAT_DTYPE_UNSPECIFIED: FloatDType
FLOAT16: FloatDType
FLOAT32: FloatDType
FLOAT64: FloatDType
UNLEARNING_METHOD_UNSPECIFIED: UnlearningMethod
NEWTON: UnlearningMethod
FINE_TUNE: UnlearningMethod
REPLAY: UnlearningMethod
PARTIAL_REPLAY: UnlearningMethod

class Event(_message.Message):
    __slots__ = ("event_id", "schema_version", "producer_id", "run_id", "seq", "emitted_at", "prev_hash", "hash", "source_registered", "op_recorded", "model_version_recorded", "gradient_batch", "prediction_recorded", "forget_requested", "unlearning_applied")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    EMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    SOURCE_REGISTERED_FIELD_NUMBER: _ClassVar[int]
    OP_RECORDED_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_RECORDED_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_BATCH_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_RECORDED_FIELD_NUMBER: _ClassVar[int]
    FORGET_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    UNLEARNING_APPLIED_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    schema_version: int
    producer_id: str
    run_id: str
    seq: int
    emitted_at: _timestamp_pb2.Timestamp
    prev_hash: bytes
    hash: bytes
    source_registered: SourceRegistered
    op_recorded: OpRecorded
    model_version_recorded: ModelVersionRecorded
    gradient_batch: GradientBatch
    prediction_recorded: PredictionRecorded
    forget_requested: ForgetRequested
    unlearning_applied: UnlearningApplied
    def __init__(self, event_id: _Optional[str] = ..., schema_version: _Optional[int] = ..., producer_id: _Optional[str] = ..., run_id: _Optional[str] = ..., seq: _Optional[int] = ..., emitted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., prev_hash: _Optional[bytes] = ..., hash: _Optional[bytes] = ..., source_registered: _Optional[_Union[SourceRegistered, _Mapping]] = ..., op_recorded: _Optional[_Union[OpRecorded, _Mapping]] = ..., model_version_recorded: _Optional[_Union[ModelVersionRecorded, _Mapping]] = ..., gradient_batch: _Optional[_Union[GradientBatch, _Mapping]] = ..., prediction_recorded: _Optional[_Union[PredictionRecorded, _Mapping]] = ..., forget_requested: _Optional[_Union[ForgetRequested, _Mapping]] = ..., unlearning_applied: _Optional[_Union[UnlearningApplied, _Mapping]] = ...) -> None: ...

class EventChunk(_message.Message):
    __slots__ = ("event_id", "index", "count", "data", "sha256")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    index: int
    count: int
    data: bytes
    sha256: str
    def __init__(self, event_id: _Optional[str] = ..., index: _Optional[int] = ..., count: _Optional[int] = ..., data: _Optional[bytes] = ..., sha256: _Optional[str] = ...) -> None: ...

class Column(_message.Message):
    __slots__ = ("name", "dtype", "personal")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    PERSONAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    personal: bool
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., personal: _Optional[bool] = ...) -> None: ...

class RowKeys(_message.Message):
    __slots__ = ("node_ids", "node_index", "rows")
    NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    NODE_INDEX_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    node_ids: _containers.RepeatedScalarFieldContainer[str]
    node_index: _containers.RepeatedScalarFieldContainer[int]
    rows: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, node_ids: _Optional[_Iterable[str]] = ..., node_index: _Optional[_Iterable[int]] = ..., rows: _Optional[_Iterable[int]] = ...) -> None: ...

class RowMap(_message.Message):
    __slots__ = ("output_rows", "segments")
    OUTPUT_ROWS_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    output_rows: int
    segments: _containers.RepeatedCompositeFieldContainer[RowSegment]
    def __init__(self, output_rows: _Optional[int] = ..., segments: _Optional[_Iterable[_Union[RowSegment, _Mapping]]] = ...) -> None: ...

class RowSegment(_message.Message):
    __slots__ = ("input", "out_start", "length", "range", "gather", "all_rows")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    OUT_START_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    GATHER_FIELD_NUMBER: _ClassVar[int]
    ALL_ROWS_FIELD_NUMBER: _ClassVar[int]
    input: int
    out_start: int
    length: int
    range: RowRange
    gather: RowGather
    all_rows: AllRows
    def __init__(self, input: _Optional[int] = ..., out_start: _Optional[int] = ..., length: _Optional[int] = ..., range: _Optional[_Union[RowRange, _Mapping]] = ..., gather: _Optional[_Union[RowGather, _Mapping]] = ..., all_rows: _Optional[_Union[AllRows, _Mapping]] = ...) -> None: ...

class RowRange(_message.Message):
    __slots__ = ("start", "step")
    START_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    start: int
    step: int
    def __init__(self, start: _Optional[int] = ..., step: _Optional[int] = ...) -> None: ...

class RowGather(_message.Message):
    __slots__ = ("encoding", "data", "count")
    class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ENCODING_UNSPECIFIED: _ClassVar[RowGather.Encoding]
        UINT64_LE: _ClassVar[RowGather.Encoding]
        DELTA_ZIGZAG_VARINT_ZSTD: _ClassVar[RowGather.Encoding]
        DELTA_INT64_ZSTD: _ClassVar[RowGather.Encoding]
    ENCODING_UNSPECIFIED: RowGather.Encoding
    UINT64_LE: RowGather.Encoding
    DELTA_ZIGZAG_VARINT_ZSTD: RowGather.Encoding
    DELTA_INT64_ZSTD: RowGather.Encoding
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    encoding: RowGather.Encoding
    data: bytes
    count: int
    def __init__(self, encoding: _Optional[_Union[RowGather.Encoding, str]] = ..., data: _Optional[bytes] = ..., count: _Optional[int] = ...) -> None: ...

class AllRows(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class ColumnMapping(_message.Message):
    __slots__ = ("output_column", "input", "input_columns", "transformation")
    OUTPUT_COLUMN_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    INPUT_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    TRANSFORMATION_FIELD_NUMBER: _ClassVar[int]
    output_column: str
    input: int
    input_columns: _containers.RepeatedScalarFieldContainer[str]
    transformation: str
    def __init__(self, output_column: _Optional[str] = ..., input: _Optional[int] = ..., input_columns: _Optional[_Iterable[str]] = ..., transformation: _Optional[str] = ...) -> None: ...

class Projection(_message.Message):
    __slots__ = ("projection_id", "kind", "seed", "input_dim", "output_dim", "parameters", "factors")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Projection.Kind]
        IDENTITY: _ClassVar[Projection.Kind]
        RADEMACHER: _ClassVar[Projection.Kind]
        SPARSE_JL: _ClassVar[Projection.Kind]
        KRONECKER: _ClassVar[Projection.Kind]
    KIND_UNSPECIFIED: Projection.Kind
    IDENTITY: Projection.Kind
    RADEMACHER: Projection.Kind
    SPARSE_JL: Projection.Kind
    KRONECKER: Projection.Kind
    PROJECTION_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    INPUT_DIM_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIM_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    FACTORS_FIELD_NUMBER: _ClassVar[int]
    projection_id: str
    kind: Projection.Kind
    seed: int
    input_dim: int
    output_dim: int
    parameters: _containers.RepeatedScalarFieldContainer[str]
    factors: _containers.RepeatedCompositeFieldContainer[ProjectionFactor]
    def __init__(self, projection_id: _Optional[str] = ..., kind: _Optional[_Union[Projection.Kind, str]] = ..., seed: _Optional[int] = ..., input_dim: _Optional[int] = ..., output_dim: _Optional[int] = ..., parameters: _Optional[_Iterable[str]] = ..., factors: _Optional[_Iterable[_Union[ProjectionFactor, _Mapping]]] = ...) -> None: ...

class ProjectionFactor(_message.Message):
    __slots__ = ("layer", "rows", "columns", "k_rows", "k_columns", "bias")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    K_ROWS_FIELD_NUMBER: _ClassVar[int]
    K_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    BIAS_FIELD_NUMBER: _ClassVar[int]
    layer: str
    rows: int
    columns: int
    k_rows: int
    k_columns: int
    bias: bool
    def __init__(self, layer: _Optional[str] = ..., rows: _Optional[int] = ..., columns: _Optional[int] = ..., k_rows: _Optional[int] = ..., k_columns: _Optional[int] = ..., bias: _Optional[bool] = ...) -> None: ...

class SourceRegistered(_message.Message):
    __slots__ = ("source_id", "uri", "content_sha256", "row_count", "schema", "format", "size_bytes", "origin", "licence", "node_id", "labels")
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
    LABELS_FIELD_NUMBER: _ClassVar[int]
    source_id: str
    uri: str
    content_sha256: str
    row_count: int
    schema: _containers.RepeatedCompositeFieldContainer[Column]
    format: str
    size_bytes: int
    origin: str
    licence: str
    node_id: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, source_id: _Optional[str] = ..., uri: _Optional[str] = ..., content_sha256: _Optional[str] = ..., row_count: _Optional[int] = ..., schema: _Optional[_Iterable[_Union[Column, _Mapping]]] = ..., format: _Optional[str] = ..., size_bytes: _Optional[int] = ..., origin: _Optional[str] = ..., licence: _Optional[str] = ..., node_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class OpRecorded(_message.Message):
    __slots__ = ("op_id", "op_name", "params_json", "input_node_ids", "output_node_id", "output_shape", "row_map", "code_version", "understood", "columns", "granularity", "output_columns")
    class Granularity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        GRANULARITY_UNSPECIFIED: _ClassVar[OpRecorded.Granularity]
        EVERY_OP: _ClassVar[OpRecorded.Granularity]
        BATCH_LEVEL: _ClassVar[OpRecorded.Granularity]
    GRANULARITY_UNSPECIFIED: OpRecorded.Granularity
    EVERY_OP: OpRecorded.Granularity
    BATCH_LEVEL: OpRecorded.Granularity
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    OP_NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    INPUT_NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    ROW_MAP_FIELD_NUMBER: _ClassVar[int]
    CODE_VERSION_FIELD_NUMBER: _ClassVar[int]
    UNDERSTOOD_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    op_id: str
    op_name: str
    params_json: str
    input_node_ids: _containers.RepeatedScalarFieldContainer[str]
    output_node_id: str
    output_shape: _containers.RepeatedScalarFieldContainer[int]
    row_map: RowMap
    code_version: str
    understood: bool
    columns: _containers.RepeatedCompositeFieldContainer[ColumnMapping]
    granularity: OpRecorded.Granularity
    output_columns: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, op_id: _Optional[str] = ..., op_name: _Optional[str] = ..., params_json: _Optional[str] = ..., input_node_ids: _Optional[_Iterable[str]] = ..., output_node_id: _Optional[str] = ..., output_shape: _Optional[_Iterable[int]] = ..., row_map: _Optional[_Union[RowMap, _Mapping]] = ..., code_version: _Optional[str] = ..., understood: _Optional[bool] = ..., columns: _Optional[_Iterable[_Union[ColumnMapping, _Mapping]]] = ..., granularity: _Optional[_Union[OpRecorded.Granularity, str]] = ..., output_columns: _Optional[_Iterable[str]] = ...) -> None: ...

class ModelVersionRecorded(_message.Message):
    __slots__ = ("model_id", "version", "parent_version", "parameter_hash", "step", "config_json", "framework", "parameter_count", "checkpoint_uri", "l2_penalty")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PARENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_HASH_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    FRAMEWORK_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_URI_FIELD_NUMBER: _ClassVar[int]
    L2_PENALTY_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    version: str
    parent_version: str
    parameter_hash: str
    step: int
    config_json: str
    framework: str
    parameter_count: int
    checkpoint_uri: str
    l2_penalty: float
    def __init__(self, model_id: _Optional[str] = ..., version: _Optional[str] = ..., parent_version: _Optional[str] = ..., parameter_hash: _Optional[str] = ..., step: _Optional[int] = ..., config_json: _Optional[str] = ..., framework: _Optional[str] = ..., parameter_count: _Optional[int] = ..., checkpoint_uri: _Optional[str] = ..., l2_penalty: _Optional[float] = ...) -> None: ...

class GradientBatch(_message.Message):
    __slots__ = ("model_id", "model_version", "step", "learning_rate", "row_keys", "dim", "dtype", "gradients", "loss", "loss_weight", "curvature_weight", "projection", "kind", "targets", "output_function")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[GradientBatch.Kind]
        TRAINING_STEP: _ClassVar[GradientBatch.Kind]
        FEATURISATION: _ClassVar[GradientBatch.Kind]
        CURVATURE: _ClassVar[GradientBatch.Kind]
    KIND_UNSPECIFIED: GradientBatch.Kind
    TRAINING_STEP: GradientBatch.Kind
    FEATURISATION: GradientBatch.Kind
    CURVATURE: GradientBatch.Kind
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    ROW_KEYS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    LOSS_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    CURVATURE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    PROJECTION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FUNCTION_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    model_version: str
    step: int
    learning_rate: float
    row_keys: RowKeys
    dim: int
    dtype: FloatDType
    gradients: bytes
    loss: _containers.RepeatedScalarFieldContainer[float]
    loss_weight: _containers.RepeatedScalarFieldContainer[float]
    curvature_weight: _containers.RepeatedScalarFieldContainer[float]
    projection: Projection
    kind: GradientBatch.Kind
    targets: _containers.RepeatedScalarFieldContainer[float]
    output_function: str
    def __init__(self, model_id: _Optional[str] = ..., model_version: _Optional[str] = ..., step: _Optional[int] = ..., learning_rate: _Optional[float] = ..., row_keys: _Optional[_Union[RowKeys, _Mapping]] = ..., dim: _Optional[int] = ..., dtype: _Optional[_Union[FloatDType, str]] = ..., gradients: _Optional[bytes] = ..., loss: _Optional[_Iterable[float]] = ..., loss_weight: _Optional[_Iterable[float]] = ..., curvature_weight: _Optional[_Iterable[float]] = ..., projection: _Optional[_Union[Projection, _Mapping]] = ..., kind: _Optional[_Union[GradientBatch.Kind, str]] = ..., targets: _Optional[_Iterable[float]] = ..., output_function: _Optional[str] = ...) -> None: ...

class PredictionRecorded(_message.Message):
    __slots__ = ("prediction_id", "model_id", "model_version", "input_rows", "output", "predicted_label", "dim", "dtype", "test_gradients", "gradient_labels", "projection", "input_features", "input_shape")
    PREDICTION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUT_ROWS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_LABEL_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    TEST_GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_LABELS_FIELD_NUMBER: _ClassVar[int]
    PROJECTION_FIELD_NUMBER: _ClassVar[int]
    INPUT_FEATURES_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    prediction_id: str
    model_id: str
    model_version: str
    input_rows: RowKeys
    output: _containers.RepeatedScalarFieldContainer[float]
    predicted_label: int
    dim: int
    dtype: FloatDType
    test_gradients: bytes
    gradient_labels: _containers.RepeatedScalarFieldContainer[str]
    projection: Projection
    input_features: bytes
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, prediction_id: _Optional[str] = ..., model_id: _Optional[str] = ..., model_version: _Optional[str] = ..., input_rows: _Optional[_Union[RowKeys, _Mapping]] = ..., output: _Optional[_Iterable[float]] = ..., predicted_label: _Optional[int] = ..., dim: _Optional[int] = ..., dtype: _Optional[_Union[FloatDType, str]] = ..., test_gradients: _Optional[bytes] = ..., gradient_labels: _Optional[_Iterable[str]] = ..., projection: _Optional[_Union[Projection, _Mapping]] = ..., input_features: _Optional[bytes] = ..., input_shape: _Optional[_Iterable[int]] = ...) -> None: ...

class ForgetTarget(_message.Message):
    __slots__ = ("source_ids", "source_rows", "row_keys")
    SOURCE_IDS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ROWS_FIELD_NUMBER: _ClassVar[int]
    ROW_KEYS_FIELD_NUMBER: _ClassVar[int]
    source_ids: _containers.RepeatedScalarFieldContainer[str]
    source_rows: _containers.RepeatedCompositeFieldContainer[SourceRows]
    row_keys: RowKeys
    def __init__(self, source_ids: _Optional[_Iterable[str]] = ..., source_rows: _Optional[_Iterable[_Union[SourceRows, _Mapping]]] = ..., row_keys: _Optional[_Union[RowKeys, _Mapping]] = ...) -> None: ...

class SourceRows(_message.Message):
    __slots__ = ("source_id", "rows")
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    source_id: str
    rows: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, source_id: _Optional[str] = ..., rows: _Optional[_Iterable[int]] = ...) -> None: ...

class AffectedRows(_message.Message):
    __slots__ = ("rows", "via")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    VIA_FIELD_NUMBER: _ClassVar[int]
    rows: RowKeys
    via: str
    def __init__(self, rows: _Optional[_Union[RowKeys, _Mapping]] = ..., via: _Optional[str] = ...) -> None: ...

class ForgetRequested(_message.Message):
    __slots__ = ("request_id", "target", "affected", "reason", "requested_by", "method", "verify_with_retrain", "model_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    AFFECTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    VERIFY_WITH_RETRAIN_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    target: ForgetTarget
    affected: _containers.RepeatedCompositeFieldContainer[AffectedRows]
    reason: str
    requested_by: str
    method: UnlearningMethod
    verify_with_retrain: bool
    model_id: str
    def __init__(self, request_id: _Optional[str] = ..., target: _Optional[_Union[ForgetTarget, _Mapping]] = ..., affected: _Optional[_Iterable[_Union[AffectedRows, _Mapping]]] = ..., reason: _Optional[str] = ..., requested_by: _Optional[str] = ..., method: _Optional[_Union[UnlearningMethod, str]] = ..., verify_with_retrain: _Optional[bool] = ..., model_id: _Optional[str] = ...) -> None: ...

class Verification(_message.Message):
    __slots__ = ("forget_loss_before", "forget_loss_after", "test_accuracy_before", "test_accuracy_after", "membership_auc", "parameter_distance", "retrained", "retrain_forget_loss", "gap_closed", "distance_to_retrained", "retrain_membership_auc", "retrain_test_accuracy", "membership_auc_before")
    FORGET_LOSS_BEFORE_FIELD_NUMBER: _ClassVar[int]
    FORGET_LOSS_AFTER_FIELD_NUMBER: _ClassVar[int]
    TEST_ACCURACY_BEFORE_FIELD_NUMBER: _ClassVar[int]
    TEST_ACCURACY_AFTER_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_AUC_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    RETRAINED_FIELD_NUMBER: _ClassVar[int]
    RETRAIN_FORGET_LOSS_FIELD_NUMBER: _ClassVar[int]
    GAP_CLOSED_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_TO_RETRAINED_FIELD_NUMBER: _ClassVar[int]
    RETRAIN_MEMBERSHIP_AUC_FIELD_NUMBER: _ClassVar[int]
    RETRAIN_TEST_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_AUC_BEFORE_FIELD_NUMBER: _ClassVar[int]
    forget_loss_before: float
    forget_loss_after: float
    test_accuracy_before: float
    test_accuracy_after: float
    membership_auc: float
    parameter_distance: float
    retrained: bool
    retrain_forget_loss: float
    gap_closed: float
    distance_to_retrained: float
    retrain_membership_auc: float
    retrain_test_accuracy: float
    membership_auc_before: float
    def __init__(self, forget_loss_before: _Optional[float] = ..., forget_loss_after: _Optional[float] = ..., test_accuracy_before: _Optional[float] = ..., test_accuracy_after: _Optional[float] = ..., membership_auc: _Optional[float] = ..., parameter_distance: _Optional[float] = ..., retrained: _Optional[bool] = ..., retrain_forget_loss: _Optional[float] = ..., gap_closed: _Optional[float] = ..., distance_to_retrained: _Optional[float] = ..., retrain_membership_auc: _Optional[float] = ..., retrain_test_accuracy: _Optional[float] = ..., membership_auc_before: _Optional[float] = ...) -> None: ...

class UnlearningApplied(_message.Message):
    __slots__ = ("request_id", "model_id", "previous_version", "new_version", "method", "rows_forgotten", "verification", "duration_seconds", "status", "error", "method_reason", "estimated_replay_steps", "estimated_replay_seconds", "steps_replayed", "checkpoint_uri", "newton_steps", "fine_tune_steps")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATUS_UNSPECIFIED: _ClassVar[UnlearningApplied.Status]
        APPLIED: _ClassVar[UnlearningApplied.Status]
        FAILED: _ClassVar[UnlearningApplied.Status]
        ALREADY_APPLIED: _ClassVar[UnlearningApplied.Status]
        REVERIFIED: _ClassVar[UnlearningApplied.Status]
    STATUS_UNSPECIFIED: UnlearningApplied.Status
    APPLIED: UnlearningApplied.Status
    FAILED: UnlearningApplied.Status
    ALREADY_APPLIED: UnlearningApplied.Status
    REVERIFIED: UnlearningApplied.Status
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    NEW_VERSION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ROWS_FORGOTTEN_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    METHOD_REASON_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_REPLAY_STEPS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_REPLAY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STEPS_REPLAYED_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_URI_FIELD_NUMBER: _ClassVar[int]
    NEWTON_STEPS_FIELD_NUMBER: _ClassVar[int]
    FINE_TUNE_STEPS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model_id: str
    previous_version: str
    new_version: str
    method: UnlearningMethod
    rows_forgotten: int
    verification: Verification
    duration_seconds: float
    status: UnlearningApplied.Status
    error: str
    method_reason: str
    estimated_replay_steps: int
    estimated_replay_seconds: float
    steps_replayed: int
    checkpoint_uri: str
    newton_steps: int
    fine_tune_steps: int
    def __init__(self, request_id: _Optional[str] = ..., model_id: _Optional[str] = ..., previous_version: _Optional[str] = ..., new_version: _Optional[str] = ..., method: _Optional[_Union[UnlearningMethod, str]] = ..., rows_forgotten: _Optional[int] = ..., verification: _Optional[_Union[Verification, _Mapping]] = ..., duration_seconds: _Optional[float] = ..., status: _Optional[_Union[UnlearningApplied.Status, str]] = ..., error: _Optional[str] = ..., method_reason: _Optional[str] = ..., estimated_replay_steps: _Optional[int] = ..., estimated_replay_seconds: _Optional[float] = ..., steps_replayed: _Optional[int] = ..., checkpoint_uri: _Optional[str] = ..., newton_steps: _Optional[int] = ..., fine_tune_steps: _Optional[int] = ...) -> None: ...
