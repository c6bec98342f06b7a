"""The embedding table engine: a Numba cuckoo hash over contiguous row arenas.

``EmbeddingTable`` is the public class; ``TableConfig`` configures it; ``Delta`` carries the
rows a table changed since a version. Kernels live in their own modules (``cuckoo``,
``lookup``, ``update``, ``export``, ``admission``, ``rows``).
"""

from ps_server.table.config import TableConfig
from ps_server.table.delta import Delta
from ps_server.table.embedding_table import EmbeddingTable
from ps_server.table.errors import (
    ConfigError,
    DeltaError,
    KeysError,
    NonFiniteGradientError,
    NotTrainableError,
    ShapeError,
    TableError,
)

__all__ = [
    "ConfigError",
    "Delta",
    "DeltaError",
    "EmbeddingTable",
    "KeysError",
    "NonFiniteGradientError",
    "NotTrainableError",
    "ShapeError",
    "TableConfig",
    "TableError",
]
