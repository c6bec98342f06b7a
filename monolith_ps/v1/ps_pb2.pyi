from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_TRAINING: _ClassVar[Role]
    ROLE_SERVING: _ClassVar[Role]

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
ROLE_UNSPECIFIED: Role
ROLE_TRAINING: Role
ROLE_SERVING: Role
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT16: DType

class ShardView(_message.Message):
    __slots__ = ("shard_index", "num_shards")
    SHARD_INDEX_FIELD_NUMBER: _ClassVar[int]
    NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    shard_index: int
    num_shards: int
    def __init__(self, shard_index: _Optional[int] = ..., num_shards: _Optional[int] = ...) -> None: ...

class TableKeys(_message.Message):
    __slots__ = ("table", "keys")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    table: str
    keys: bytes
    def __init__(self, table: _Optional[str] = ..., keys: _Optional[bytes] = ...) -> None: ...

class LookupRequest(_message.Message):
    __slots__ = ("tables", "view")
    TABLES_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    tables: _containers.RepeatedCompositeFieldContainer[TableKeys]
    view: ShardView
    def __init__(self, tables: _Optional[_Iterable[_Union[TableKeys, _Mapping]]] = ..., view: _Optional[_Union[ShardView, _Mapping]] = ...) -> None: ...

class TableValues(_message.Message):
    __slots__ = ("table", "dim", "dtype", "values", "found")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    table: str
    dim: int
    dtype: DType
    values: bytes
    found: bytes
    def __init__(self, table: _Optional[str] = ..., dim: _Optional[int] = ..., dtype: _Optional[_Union[DType, str]] = ..., values: _Optional[bytes] = ..., found: _Optional[bytes] = ...) -> None: ...

class LookupResponse(_message.Message):
    __slots__ = ("tables",)
    TABLES_FIELD_NUMBER: _ClassVar[int]
    tables: _containers.RepeatedCompositeFieldContainer[TableValues]
    def __init__(self, tables: _Optional[_Iterable[_Union[TableValues, _Mapping]]] = ...) -> None: ...

class TableGradients(_message.Message):
    __slots__ = ("table", "keys", "grads")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    GRADS_FIELD_NUMBER: _ClassVar[int]
    table: str
    keys: bytes
    grads: bytes
    def __init__(self, table: _Optional[str] = ..., keys: _Optional[bytes] = ..., grads: _Optional[bytes] = ...) -> None: ...

class PushRequest(_message.Message):
    __slots__ = ("tables", "request_id", "view")
    TABLES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    tables: _containers.RepeatedCompositeFieldContainer[TableGradients]
    request_id: str
    view: ShardView
    def __init__(self, tables: _Optional[_Iterable[_Union[TableGradients, _Mapping]]] = ..., request_id: _Optional[str] = ..., view: _Optional[_Union[ShardView, _Mapping]] = ...) -> None: ...

class PushResponse(_message.Message):
    __slots__ = ("duplicate", "rows_updated", "rows_pending_admission")
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    ROWS_UPDATED_FIELD_NUMBER: _ClassVar[int]
    ROWS_PENDING_ADMISSION_FIELD_NUMBER: _ClassVar[int]
    duplicate: bool
    rows_updated: int
    rows_pending_admission: int
    def __init__(self, duplicate: _Optional[bool] = ..., rows_updated: _Optional[int] = ..., rows_pending_admission: _Optional[int] = ...) -> None: ...

class DenseArray(_message.Message):
    __slots__ = ("name", "values")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    name: str
    values: bytes
    def __init__(self, name: _Optional[str] = ..., values: _Optional[bytes] = ...) -> None: ...

class PullDenseRequest(_message.Message):
    __slots__ = ("names",)
    NAMES_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, names: _Optional[_Iterable[str]] = ...) -> None: ...

class PullDenseResponse(_message.Message):
    __slots__ = ("arrays", "version")
    ARRAYS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    arrays: _containers.RepeatedCompositeFieldContainer[DenseArray]
    version: int
    def __init__(self, arrays: _Optional[_Iterable[_Union[DenseArray, _Mapping]]] = ..., version: _Optional[int] = ...) -> None: ...

class PushDenseRequest(_message.Message):
    __slots__ = ("grads", "request_id")
    GRADS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    grads: _containers.RepeatedCompositeFieldContainer[DenseArray]
    request_id: str
    def __init__(self, grads: _Optional[_Iterable[_Union[DenseArray, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class PushDenseResponse(_message.Message):
    __slots__ = ("duplicate", "version")
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    duplicate: bool
    version: int
    def __init__(self, duplicate: _Optional[bool] = ..., version: _Optional[int] = ...) -> None: ...

class TableInfo(_message.Message):
    __slots__ = ("name", "dim", "optimizer", "optimizer_args_json", "initializer", "admit_after", "ttl_seconds", "max_rows", "eviction", "dtype", "num_rows", "version", "load_factor", "memory_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_ARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    INITIALIZER_FIELD_NUMBER: _ClassVar[int]
    ADMIT_AFTER_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_ROWS_FIELD_NUMBER: _ClassVar[int]
    EVICTION_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    NUM_ROWS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LOAD_FACTOR_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    dim: int
    optimizer: str
    optimizer_args_json: str
    initializer: str
    admit_after: int
    ttl_seconds: float
    max_rows: int
    eviction: str
    dtype: DType
    num_rows: int
    version: int
    load_factor: float
    memory_bytes: int
    def __init__(self, name: _Optional[str] = ..., dim: _Optional[int] = ..., optimizer: _Optional[str] = ..., optimizer_args_json: _Optional[str] = ..., initializer: _Optional[str] = ..., admit_after: _Optional[int] = ..., ttl_seconds: _Optional[float] = ..., max_rows: _Optional[int] = ..., eviction: _Optional[str] = ..., dtype: _Optional[_Union[DType, str]] = ..., num_rows: _Optional[int] = ..., version: _Optional[int] = ..., load_factor: _Optional[float] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class DenseInfo(_message.Message):
    __slots__ = ("name", "size", "optimizer")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    optimizer: str
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., optimizer: _Optional[str] = ...) -> None: ...

class DescribeTablesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeTablesResponse(_message.Message):
    __slots__ = ("role", "shard_index", "num_shards", "epoch", "tables", "dense", "server_version", "max_message_bytes", "max_batch_keys")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SHARD_INDEX_FIELD_NUMBER: _ClassVar[int]
    NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    DENSE_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_KEYS_FIELD_NUMBER: _ClassVar[int]
    role: Role
    shard_index: int
    num_shards: int
    epoch: int
    tables: _containers.RepeatedCompositeFieldContainer[TableInfo]
    dense: _containers.RepeatedCompositeFieldContainer[DenseInfo]
    server_version: str
    max_message_bytes: int
    max_batch_keys: int
    def __init__(self, role: _Optional[_Union[Role, str]] = ..., shard_index: _Optional[int] = ..., num_shards: _Optional[int] = ..., epoch: _Optional[int] = ..., tables: _Optional[_Iterable[_Union[TableInfo, _Mapping]]] = ..., dense: _Optional[_Iterable[_Union[DenseInfo, _Mapping]]] = ..., server_version: _Optional[str] = ..., max_message_bytes: _Optional[int] = ..., max_batch_keys: _Optional[int] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ("full",)
    FULL_FIELD_NUMBER: _ClassVar[int]
    full: bool
    def __init__(self, full: _Optional[bool] = ...) -> None: ...

class SnapshotResponse(_message.Message):
    __slots__ = ("path", "bytes", "seconds")
    PATH_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    path: str
    bytes: int
    seconds: float
    def __init__(self, path: _Optional[str] = ..., bytes: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class ExpireRequest(_message.Message):
    __slots__ = ("now",)
    NOW_FIELD_NUMBER: _ClassVar[int]
    now: float
    def __init__(self, now: _Optional[float] = ...) -> None: ...

class ExpireResponse(_message.Message):
    __slots__ = ("rows_expired",)
    ROWS_EXPIRED_FIELD_NUMBER: _ClassVar[int]
    rows_expired: int
    def __init__(self, rows_expired: _Optional[int] = ...) -> None: ...

class ExportDeltaRequest(_message.Message):
    __slots__ = ("table", "since_version", "epoch", "max_chunk_rows", "route_num_shards", "route_partition_count", "route_partition_index")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    SINCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNK_ROWS_FIELD_NUMBER: _ClassVar[int]
    ROUTE_NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    ROUTE_PARTITION_COUNT_FIELD_NUMBER: _ClassVar[int]
    ROUTE_PARTITION_INDEX_FIELD_NUMBER: _ClassVar[int]
    table: str
    since_version: int
    epoch: int
    max_chunk_rows: int
    route_num_shards: int
    route_partition_count: int
    route_partition_index: int
    def __init__(self, table: _Optional[str] = ..., since_version: _Optional[int] = ..., epoch: _Optional[int] = ..., max_chunk_rows: _Optional[int] = ..., route_num_shards: _Optional[int] = ..., route_partition_count: _Optional[int] = ..., route_partition_index: _Optional[int] = ...) -> None: ...

class DeltaChunk(_message.Message):
    __slots__ = ("table", "source_shard", "source_num_shards", "epoch", "full_resync", "since_version", "dim", "dtype", "keys", "values", "versions", "tombstone_keys", "tombstone_versions", "last", "complete_version", "dense", "dense_version", "default_value", "default_version")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SHARD_FIELD_NUMBER: _ClassVar[int]
    SOURCE_NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    FULL_RESYNC_FIELD_NUMBER: _ClassVar[int]
    SINCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONE_KEYS_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONE_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_VERSION_FIELD_NUMBER: _ClassVar[int]
    DENSE_FIELD_NUMBER: _ClassVar[int]
    DENSE_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VALUE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VERSION_FIELD_NUMBER: _ClassVar[int]
    table: str
    source_shard: int
    source_num_shards: int
    epoch: int
    full_resync: bool
    since_version: int
    dim: int
    dtype: DType
    keys: bytes
    values: bytes
    versions: bytes
    tombstone_keys: bytes
    tombstone_versions: bytes
    last: bool
    complete_version: int
    dense: _containers.RepeatedCompositeFieldContainer[DenseArray]
    dense_version: int
    default_value: bytes
    default_version: int
    def __init__(self, table: _Optional[str] = ..., source_shard: _Optional[int] = ..., source_num_shards: _Optional[int] = ..., epoch: _Optional[int] = ..., full_resync: _Optional[bool] = ..., since_version: _Optional[int] = ..., dim: _Optional[int] = ..., dtype: _Optional[_Union[DType, str]] = ..., keys: _Optional[bytes] = ..., values: _Optional[bytes] = ..., versions: _Optional[bytes] = ..., tombstone_keys: _Optional[bytes] = ..., tombstone_versions: _Optional[bytes] = ..., last: _Optional[bool] = ..., complete_version: _Optional[int] = ..., dense: _Optional[_Iterable[_Union[DenseArray, _Mapping]]] = ..., dense_version: _Optional[int] = ..., default_value: _Optional[bytes] = ..., default_version: _Optional[int] = ...) -> None: ...

class ApplyDeltaResponse(_message.Message):
    __slots__ = ("rows_applied", "rows_skipped", "tombstones_applied")
    ROWS_APPLIED_FIELD_NUMBER: _ClassVar[int]
    ROWS_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONES_APPLIED_FIELD_NUMBER: _ClassVar[int]
    rows_applied: int
    rows_skipped: int
    tombstones_applied: int
    def __init__(self, rows_applied: _Optional[int] = ..., rows_skipped: _Optional[int] = ..., tombstones_applied: _Optional[int] = ...) -> None: ...

class GetSyncStateRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SyncCursor(_message.Message):
    __slots__ = ("table", "source_shard", "source_num_shards", "epoch", "version", "applied_at_unix")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SHARD_FIELD_NUMBER: _ClassVar[int]
    SOURCE_NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    table: str
    source_shard: int
    source_num_shards: int
    epoch: int
    version: int
    applied_at_unix: float
    def __init__(self, table: _Optional[str] = ..., source_shard: _Optional[int] = ..., source_num_shards: _Optional[int] = ..., epoch: _Optional[int] = ..., version: _Optional[int] = ..., applied_at_unix: _Optional[float] = ...) -> None: ...

class GetSyncStateResponse(_message.Message):
    __slots__ = ("shard_index", "num_shards", "cursors", "dense_version", "dense_epoch")
    SHARD_INDEX_FIELD_NUMBER: _ClassVar[int]
    NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    CURSORS_FIELD_NUMBER: _ClassVar[int]
    DENSE_VERSION_FIELD_NUMBER: _ClassVar[int]
    DENSE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    shard_index: int
    num_shards: int
    cursors: _containers.RepeatedCompositeFieldContainer[SyncCursor]
    dense_version: int
    dense_epoch: int
    def __init__(self, shard_index: _Optional[int] = ..., num_shards: _Optional[int] = ..., cursors: _Optional[_Iterable[_Union[SyncCursor, _Mapping]]] = ..., dense_version: _Optional[int] = ..., dense_epoch: _Optional[int] = ...) -> None: ...

class ResetSyncCursorsRequest(_message.Message):
    __slots__ = ("table", "source_shards")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SHARDS_FIELD_NUMBER: _ClassVar[int]
    table: str
    source_shards: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, table: _Optional[str] = ..., source_shards: _Optional[_Iterable[int]] = ...) -> None: ...

class ResetSyncCursorsResponse(_message.Message):
    __slots__ = ("cursors_reset",)
    CURSORS_RESET_FIELD_NUMBER: _ClassVar[int]
    cursors_reset: int
    def __init__(self, cursors_reset: _Optional[int] = ...) -> None: ...
