"""The embedding table engine: a Numba cuckoo hash over contiguous row arenas.

``EmbeddingTable`` is the public class, configured by ``monolith_ps.table_config.TableConfig``;
``Delta`` carries the rows a table changed since a version. Kernels live in their own
modules (``cuckoo``, ``lookup``, ``update``, ``export``, ``admission``, ``rows``).
"""

from ps_server.table.delta import Delta
from ps_server.table.embedding_table import EmbeddingTable
from ps_server.table.errors import (
    DeltaError,
    KeysError,
    NonFiniteGradientError,
    NotTrainableError,
    ShapeError,
    TableError,
)

__all__ = [
    "Delta",
    "DeltaError",
    "EmbeddingTable",
    "KeysError",
    "NonFiniteGradientError",
    "NotTrainableError",
    "ShapeError",
    "TableError",
]
