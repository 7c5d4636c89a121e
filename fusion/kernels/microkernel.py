"""A register-tiled multiply-add, written in LLVM IR: the inner kernel of ``fusion.kernels.tiles``.

``tile(rows, c, c_base, c_pitch, a, a_base, a_offsets, a_pitch, b, b_base, b_offsets, k_first, k_count,
accumulate)`` computes, for ``i < rows`` and ``l < NR``::

    c[c_base + i*c_pitch + l] (+)= sum over k in [k_first, k_first + k_count) of
                                   a[a_base + a_offsets[k] + i*a_pitch] * b[b_base + b_offsets[k] + l]

Each ``k`` reads an arbitrary element of each row of ``a`` (``a_offsets``) and an arbitrary row of ``b``
(``b_offsets``), so neither is packed: ``a`` is the weight array as given. The ``rows x NR`` sums stay in vector
registers for the whole ``k`` loop: per ``k``, ``NR/lanes`` vector loads of ``b`` and ``rows`` broadcasts of ``a``
feed ``rows * NR/lanes`` fused multiply-adds.

Why IR: Numba's loop vectorizer keeps no accumulator in a register across a reduction, and LLVM's SLP
vectorizer did not vectorize the same tile written with scalars. How fast this one runs, in each shape and vector
width: ``python benchmarks/microkernel.py`` (figures: benchmarks/NOTES.md, "Tiled kernel").
``llvm.fmuladd`` lets LLVM fuse each multiply-add where the CPU has FMA; the order of the sums is fixed, so a
result is the same from run to run.
"""

from __future__ import annotations

import os

import llvmlite.binding as llvm_binding
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from fusion.kernels.config import SERIAL

# Rows of a full tile, and vectors per row: 6 x 2 keeps 12 accumulators, 2 loaded vectors and 1 broadcast in 16
# vector registers (the fastest shape: python benchmarks/microkernel.py).
MR = 6
VECTORS_PER_ROW = 2
# The CPU's widest vectors: 64 bytes with AVX-512, 32 with AVX, else 16. Numba's on-disk cache is keyed by the CPU, so
# code compiled for one width is never loaded on a CPU of another.
_FEATURES = llvm_binding.get_host_cpu_features()
HOST_VECTOR_BYTES = 64 if _FEATURES.get("avx512f") else 32 if _FEATURES.get("avx") else 16
# FUSION_VECTOR_BYTES (16, 32 or 64) forces the width, so that each width's tiling is tested on any CPU (LLVM splits
# vectors wider than the CPU's). Not part of Numba's cache key: it needs a NUMBA_CACHE_DIR of its own.


def _vector_bytes() -> int:
    forced = os.environ.get("FUSION_VECTOR_BYTES", "")
    if not forced:
        return HOST_VECTOR_BYTES
    if forced not in ("16", "32", "64"):
        raise ValueError(f"FUSION_VECTOR_BYTES={forced!r}: expected 16, 32 or 64")
    if not os.environ.get("NUMBA_CACHE_DIR"):
        raise ValueError("FUSION_VECTOR_BYTES needs a NUMBA_CACHE_DIR of its own: Numba's cache would otherwise keep "
                         "code of the forced width for later runs")
    return int(forced)


VECTOR_BYTES = _vector_bytes()


def lanes(itemsize: int) -> int:
    """Elements per vector register."""
    return VECTOR_BYTES // itemsize


def tile_positions(itemsize: int) -> int:
    """``NR``: the positions a tile computes, for elements of ``itemsize`` bytes (``tile_width`` in compiled code)."""
    return VECTORS_PER_ROW * lanes(itemsize)


@njit(inline="always", **SERIAL)
def tile_width(itemsize):
    """``tile_positions`` in compiled code."""
    return VECTORS_PER_ROW * (VECTOR_BYTES // itemsize)


def tile_intrinsic(rows: int, vectors: int = VECTORS_PER_ROW):
    """The tile for a fixed number of rows (a block of output channels may have fewer than ``MR``); ``vectors`` per
    row other than the default only for ``benchmarks/microkernel.py``, which compares tile shapes."""

    @intrinsic
    def tile(typingctx, c, c_base, c_pitch, a, a_base, a_offsets, a_pitch, b, b_base, b_offsets, k_first, k_count,
             accumulate):
        signature = types.void(c, c_base, c_pitch, a, a_base, a_offsets, a_pitch, b, b_base, b_offsets, k_first,
                               k_count, accumulate)

        def codegen(context, builder, sig, args):
            _, c_base, c_pitch, _, a_base, _, a_pitch, _, b_base, _, k_first, k_count, accumulate = args
            dtype = sig.args[0].dtype
            width = lanes(dtype.bitwidth // 8)
            element = context.get_data_type(dtype)
            vector = ir.VectorType(element, width)
            vector_pointer = vector.as_pointer()
            i64 = ir.IntType(64)

            def data(index):
                return cgutils.create_struct_proxy(sig.args[index])(context, builder, value=args[index]).data

            def constant(value):
                return ir.Constant(i64, value)

            c_data, a_data, a_offsets, b_data, b_offsets = data(0), data(3), data(5), data(7), data(9)
            fmuladd = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vector, [vector] * 3), f"llvm.fmuladd.v{width}f{dtype.bitwidth}")
            c_rows = [builder.gep(c_data, [builder.add(c_base, builder.mul(c_pitch, constant(i)))])
                      for i in range(rows)]
            a_rows = [builder.gep(a_data, [builder.add(a_base, builder.mul(a_pitch, constant(i)))])
                      for i in range(rows)]

            def c_vector(i, v):
                return builder.bitcast(builder.gep(c_rows[i], [constant(v * width)]), vector_pointer)

            # allocas that LLVM's SROA turns into registers
            sums = [[cgutils.alloca_once(builder, vector) for _ in range(vectors)] for _ in range(rows)]
            zero = ir.Constant(vector, None)
            with builder.if_else(builder.icmp_unsigned("!=", accumulate, ir.Constant(accumulate.type, 0))) as (
                    add_to_c, overwrite_c):
                with add_to_c:
                    for i in range(rows):
                        for v in range(vectors):
                            builder.store(builder.load(c_vector(i, v), align=1), sums[i][v])
                with overwrite_c:
                    for i in range(rows):
                        for v in range(vectors):
                            builder.store(zero, sums[i][v])
            undefined = ir.Constant(vector, ir.Undefined)
            splat_mask = ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width)
            with cgutils.for_range(builder, k_count) as loop:
                k = builder.add(k_first, loop.index)
                b_row = builder.gep(b_data, [builder.add(b_base, builder.load(builder.gep(b_offsets, [k])))])
                b_vectors = [builder.load(builder.bitcast(builder.gep(b_row, [constant(v * width)]), vector_pointer),
                                          align=1) for v in range(vectors)]
                a_offset = builder.load(builder.gep(a_offsets, [k]))
                for i in range(rows):
                    scalar = builder.load(builder.gep(a_rows[i], [a_offset]))
                    broadcast = builder.shuffle_vector(
                        builder.insert_element(undefined, scalar, ir.Constant(ir.IntType(32), 0)), undefined,
                        splat_mask)
                    for v in range(vectors):
                        builder.store(builder.call(fmuladd, [broadcast, b_vectors[v], builder.load(sums[i][v])]),
                                      sums[i][v])
            for i in range(rows):
                for v in range(vectors):
                    builder.store(builder.load(sums[i][v]), c_vector(i, v), align=1)
            return context.get_dummy_value()

        return signature, codegen

    return tile


_tile_1, _tile_2, _tile_3, _tile_4, _tile_5, _tile_6 = (tile_intrinsic(rows) for rows in range(1, MR + 1))


@njit(inline="always", **SERIAL)
def tile(rows, c, c_base, c_pitch, a, a_base, a_offsets, a_pitch, b, b_base, b_offsets, k_first, k_count, accumulate):
    """The ``rows x NR`` tile (``rows`` from 1 to ``MR``); see the module docstring."""
    if rows == 6:
        _tile_6(c, c_base, c_pitch, a, a_base, a_offsets, a_pitch, b, b_base, b_offsets, k_first, k_count, accumulate)
    elif rows == 5:
        _tile_5(c, c_base, c_pitch, a, a_base, a_offsets, a_pitch, b, b_base, b_offsets, k_first, k_count, accumulate)
    elif rows == 4:
        _tile_4(c, c_base, c_pitch, a, a_base, a_offsets, a_pitch, b, b_base, b_offsets, k_first, k_count, accumulate)
    elif rows == 3:
        _tile_3(c, c_base, c_pitch, a, a_base, a_offsets, a_pitch, b, b_base, b_offsets, k_first, k_count, accumulate)
    elif rows == 2:
        _tile_2(c, c_base, c_pitch, a, a_base, a_offsets, a_pitch, b, b_base, b_offsets, k_first, k_count, accumulate)
    else:
        _tile_1(c, c_base, c_pitch, a, a_base, a_offsets, a_pitch, b, b_base, b_offsets, k_first, k_count, accumulate)
