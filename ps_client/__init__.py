"""The monolith-ps client: look up and push embedding rows of a sharded PS cluster.

>>> from ps_client import PSClient, make_fid
>>> c = PSClient(["127.0.0.1:50051", "127.0.0.1:50052"])  # doctest: +SKIP
>>> rows = c.lookup("user_id", make_fid(1, user_ids))  # doctest: +SKIP
"""

from monolith_ps.transport.channels import ClientTLS
from monolith_ps.transport.cluster import ShardInfo, SyncCursor, SyncState, TableInfo
from ps_client.client import PSClient
from ps_client.errors import (
    DeadlineExceededError,
    InvalidRequestError,
    NameResolutionError,
    PreconditionError,
    PSError,
    RequestTooLargeError,
    ServerError,
    ServerUnavailableError,
    TLSHandshakeError,
    TopologyError,
    UnknownTableError,
)
from ps_client.fid import make_fid
from ps_client.results import PushResult, SnapshotInfo
from ps_client.retry import RetryPolicy
from ps_client.unique_keys import UniqueKeys

__all__ = [
    "ClientTLS",
    "DeadlineExceededError",
    "InvalidRequestError",
    "NameResolutionError",
    "PSClient",
    "PSError",
    "PreconditionError",
    "PushResult",
    "RequestTooLargeError",
    "RetryPolicy",
    "ServerError",
    "ServerUnavailableError",
    "ShardInfo",
    "TLSHandshakeError",
    "SnapshotInfo",
    "SyncCursor",
    "SyncState",
    "TableInfo",
    "TopologyError",
    "UniqueKeys",
    "UnknownTableError",
    "make_fid",
]
