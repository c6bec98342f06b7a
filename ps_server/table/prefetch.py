"""Software prefetch for the batch kernels.

A lookup is two dependent cache misses (bucket, then row) per key; issued one key at a
time they leave the memory system idle. The kernels walk each batch in passes and ask for
the lines of key ``i + LOOKAHEAD`` while working on key ``i``, so many misses are in flight
at once. ``prefetch_at`` emits LLVM's ``llvm.prefetch`` (a hint: it never faults).
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.extending import intrinsic

LOOKAHEAD = 12
_LINE = 64


@intrinsic
def prefetch_at(typingctx, array, row, offset):
    """Prefetch the cache line at byte ``offset`` of row ``row`` of ``array`` (for reading
    and writing; kept in all cache levels)."""
    if not isinstance(array, types.Array):
        return None

    def codegen(context, builder, sig, args):
        arrty = sig.args[0]
        ary = context.make_array(arrty)(context, builder, args[0])
        strides = cgutils.unpack_tuple(builder, ary.strides, arrty.ndim)
        r = context.cast(builder, args[1], sig.args[1], types.intp)
        off = context.cast(builder, args[2], sig.args[2], types.intp)
        base = builder.ptrtoint(ary.data, cgutils.intp_t)
        addr = builder.add(builder.add(base, builder.mul(r, strides[0])), off)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [builder.inttoptr(addr, i8p), i32(1), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(array, row, offset), codegen


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def prefetch_row(array, row):
    """Prefetch every cache line of row ``row`` of a 2-D C-contiguous array."""
    prefetch_head(array, row, array.shape[1] * array.itemsize)


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def prefetch_head(array, row, nbytes):
    """Prefetch the cache lines of the first ``nbytes`` of row ``row``."""
    for off in range(0, nbytes, _LINE):
        prefetch_at(array, row, off)
