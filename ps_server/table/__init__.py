"""The embedding table engine: a Numba cuckoo hash over contiguous row arenas.

``EmbeddingTable`` (``embedding_table``) is the public class, configured by
``monolith_ps.table_config.TableConfig``; ``Delta`` carries the rows a table changed since a
version. The class stands on its parts: ``arrays`` (the arrays and their growth),
``validation`` (input checks), ``tiering`` and ``cold`` (hot and cold tiers), ``eviction``
(``max_rows``), ``delta_io`` (deltas in and out), ``metadata`` (what is not a row). Kernels
live in their own modules (``cuckoo``, ``lookup``, ``update``, ``export``, ``admission``,
``rows``, ``tiers``).
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
