"""How the table's hot kernels are compiled.

Numba's runtime (NRT) reference-counts every array a function receives, and the
counting survives inlining: each helper a kernel calls per key (take a row, initialize
it, insert it into the index) adds an atomic increment and decrement per array argument,
in branches the refcount pruning pass cannot pair up. On the insert path that was half
of the CPU time. ``hot_kernel`` compiles a kernel, and every helper it calls, without
NRT. Every table kernel that walks a batch key by key and allocates nothing is one. Such
a kernel must not allocate arrays (it gets its scratch space from the caller) and works
only on the arrays it is given, which Python keeps alive for the call.
"""

from __future__ import annotations

from numba import njit

# _nrt is a private option numba's annotations of njit leave out
hot_kernel = njit(nogil=True, cache=True, error_model="numpy", _nrt=False)  # type: ignore[call-overload]
