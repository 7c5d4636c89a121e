"""Parallel loops without ``prange``: a loop body over task indices, run on Numba's thread pool.

``tasks(body)(count, *operands)`` runs tasks ``0 .. count - 1`` on ``numba.get_num_threads()`` threads of the calling
thread's setting: ``body(first, last, *operands)`` once per thread, for its share ``first <= task < last`` (as even as
can be, in order, as ``prange`` shares out its iterations), through the threading layer's ``parallel_for``: the same
pool, the same OpenMP (or TBB, or workqueue) scheduling and the same wake-up as a ``prange`` loop. A body allocates
its scratch once for its share, as Numba hoists a ``prange`` body's allocations. What it saves is compile time. A
``prange`` kernel goes through Numba's parfor passes and compiles its loop body again as a kernel of its own (the
tiled GEMM: 13 s on a Zen 3, 7 s of it in the parfor lowering); a Numba ``target="parallel"`` gufunc skips those
passes but re-optimizes its whole body, uncached, in every process. Here the body compiles once into a plain gufunc
loop, which Numba caches on disk, and a small cached launcher hands that loop's address to ``parallel_for`` with the
GIL released (benchmarks/NOTES.md, "Parallel loops without prange"). NumPy's gufunc machinery is not involved: on a
small layer, right after a large one, its type resolution over a dozen operands cost more than the layer's arithmetic.

``parallel_for(loop, args, dimensions, steps, data, core_ndim, array_count, threads)`` takes NumPy's gufunc layout:
``args`` the data pointers (the shares' first tasks, their last tasks, then each operand), ``dimensions`` the count of
shares then every operand's axes, ``steps`` one outer step per array (8 bytes for the bounds, 0 for the operands,
which every share sees whole) then every operand's strides. It calls ``loop`` for each share with the pointers
advanced.

Operands are C-contiguous arrays of rank 1 or more, nothing else (scalars travel packed in an int64 array;
anything else is refused when the launcher is typed), and the body may write into them. The loop is compiled for
C-contiguous operands, so its inner loops index without strides and vectorize; the launcher passes the strides of
each operand's shape, whatever NumPy holds for a unit axis.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic
from numba.np.ufunc import parallel
from numba.np.ufunc.ufuncbuilder import UFuncDispatcher
from numba.np.ufunc.wrappers import build_gufunc_wrapper

from fusion.kernels.config import SERIAL


class TaskLoop:
    """A parallel loop over task indices whose body is ``body(first, last, *operands)``, a plain Python function in
    Numba's nopython subset (it calls ``@njit`` kernels). One loop is compiled, and cached on disk, per list of
    operand dtypes and ranks, on first use."""

    def __init__(self, body):
        self._body = body
        self._dispatcher = None
        self._loops: dict[tuple, tuple] = {}  # key -> (address, compile result, wrapper: keeps the code alive)

    def __call__(self, count: int, *operands: np.ndarray) -> None:
        try:
            key = tuple([(operand.dtype, operand.ndim) for operand in operands])
        except AttributeError:
            raise TypeError(f"{self._body.__name__}: every operand must be an array, got "
                            f"{[type(operand).__name__ for operand in operands]}") from None
        loop = self._loops.get(key)
        if loop is None:
            loop = self._loops[key] = self._compile(key)
        _launch(loop[0], count, *operands)

    def _compile(self, key: tuple) -> tuple:
        parallel._launch_threads()  # loads the threading layer: registers parallel_for and get_num_threads
        if self._dispatcher is None:
            self._dispatcher = UFuncDispatcher(self._body, targetoptions={"nopython": True})
            self._dispatcher.enable_caching()
        # one core-dimension symbol per axis of each operand: no two operands are constrained to a common size
        core = [(), ()] + [tuple(f"d{i}_{axis}" for axis in range(ndim)) for i, (_, ndim) in enumerate(key)]
        signature = types.void(types.int64, types.int64,
                               *(types.Array(numba.from_dtype(dtype), ndim, "C") for dtype, ndim in key))
        result = self._dispatcher.compile(signature)
        wrapper = build_gufunc_wrapper(self._body, result, core, [], cache=True, is_parfors=False)
        return wrapper.library.get_pointer_to_function(wrapper.name), result, wrapper

    def inspect_asm(self) -> dict:
        """The body's machine code per compiled signature, as a dispatcher's ``inspect_asm`` gives it (for tests)."""
        return {result.signature: result.library.get_asm_str() for _, result, _ in self._loops.values()}


def tasks(body) -> TaskLoop:
    """Decorator: ``body(first, last, *operands)`` becomes a ``TaskLoop``."""
    return TaskLoop(body)


@njit(inline="always", **SERIAL)
def triple(values, first):
    """``(values[first], values[first + 1], values[first + 2])``: three ints a body unpacks from its packed int64
    operand (strides, pads, a shape)."""
    return values[first], values[first + 1], values[first + 2]


@intrinsic
def _parallel_for(typingctx, loop, firsts, lasts, operands):
    """``numba_parallel_for(loop, args, dimensions, steps, NULL, core_ndim, array_count, len(firsts))`` over the
    shares ``firsts, lasts`` and the tuple ``operands``, laid out as the module docstring says: the threading layer's
    entry point, as ``numba.np.ufunc.parallel`` registers it."""
    for index, operand in enumerate(operands):
        if not (isinstance(operand, types.Array) and operand.layout == "C" and operand.ndim > 0):
            raise TypingError(f"operand {index} must be a C-contiguous array of rank 1 or more, got {operand}")

    def codegen(context, builder, signature, arguments):
        loop_address, firsts, lasts, tuple_value = arguments
        byte_pointer, i64, i32 = ir.IntType(8).as_pointer(), ir.IntType(64), ir.IntType(32)
        arrays = [(signature.args[1], firsts), (signature.args[2], lasts)] + [
            (operand, builder.extract_value(tuple_value, index)) for index, operand in enumerate(signature.args[3])]
        core_ndim = sum(operand.ndim for operand in signature.args[3])
        args = cgutils.alloca_once(builder, byte_pointer, size=len(arrays))
        dimensions = cgutils.alloca_once(builder, i64, size=1 + core_ndim)
        steps = cgutils.alloca_once(builder, i64, size=len(arrays) + core_ndim)

        def put(array, at, value):
            builder.store(value, builder.gep(array, [ir.Constant(i64, at)]))

        axis = 0
        for index, (array_type, value) in enumerate(arrays):
            array = cgutils.create_struct_proxy(array_type)(context, builder, value=value)
            put(args, index, builder.bitcast(array.data, byte_pointer))
            shape = cgutils.unpack_tuple(builder, array.shape, array_type.ndim)
            itemsize = ir.Constant(i64, context.get_abi_sizeof(context.get_data_type(array_type.dtype)))
            if index < 2:  # the shares' bounds: one of each per share
                shares = shape[0]
                put(dimensions, 0, shares)
                put(steps, index, itemsize)
                continue
            put(steps, index, ir.Constant(i64, 0))
            stride = itemsize
            for a in reversed(range(array_type.ndim)):  # the strides of a C-contiguous array of this shape
                put(dimensions, 1 + axis + a, shape[a])
                put(steps, len(arrays) + axis + a, stride)
                stride = builder.mul(stride, shape[a])
            axis += array_type.ndim

        parallel_for = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer] * 5 + [i64, i64, i32]), "numba_parallel_for")
        builder.call(parallel_for, [builder.inttoptr(loop_address, byte_pointer), builder.bitcast(args, byte_pointer),
                                    builder.bitcast(dimensions, byte_pointer), builder.bitcast(steps, byte_pointer),
                                    ir.Constant(byte_pointer, None), ir.Constant(i64, core_ndim),
                                    ir.Constant(i64, len(arrays)), builder.trunc(shares, i32)])
        return context.get_dummy_value()

    return types.void(loop, firsts, lasts, operands), codegen


@intrinsic
def _num_threads(typingctx):
    """The calling thread's ``numba.get_num_threads()``, through the symbol the threading layer registers: Numba's
    own overload calls it through an address fixed in the process, which keeps the caller out of the disk cache."""

    def codegen(context, builder, signature, arguments):
        get_num_threads = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []),
                                                         "get_num_threads")
        return builder.sext(builder.call(get_num_threads, []), ir.IntType(64))

    return types.int64(), codegen


@njit(cache=True, nogil=True)
def _launch(loop, count, *operands):
    """Run the compiled gufunc loop at address ``loop`` for tasks ``0 .. count - 1`` on ``operands``: one share per
    thread (fewer when there are fewer tasks), the GIL released (``nogil``). Operands as separate arguments: Numba
    types each array on its fast path, a tuple of them on a slow one."""
    if count == 0:
        return
    shares = min(count, _num_threads())
    firsts, lasts = np.empty(shares, np.int64), np.empty(shares, np.int64)
    for share in range(shares):
        firsts[share], lasts[share] = share * count // shares, (share + 1) * count // shares
    _parallel_for(loop, firsts, lasts, operands)
