"""Read the float32 parameters stored in an ``.mnn`` file exactly, with the ``flatbuffers`` runtime.

An ``.mnn`` file is a FlatBuffer whose root table is MNN's ``Net`` (MNN's ``schema/default/MNN.fbs``). This reads
only what the checker needs, by the field numbers of that schema: ``Net.oplists`` (field 3) and ``Net.tensorName``
(7); ``Op.main`` (the union, fields 1 and 2) and ``Op.name`` (3); and in the op's parameter table the float vectors
named below. MNN's JSON dump prints six decimals, so it gives the structure and this gives the values.
"""

from __future__ import annotations

from pathlib import Path

import flatbuffers
import numpy as np
from flatbuffers import number_types
from flatbuffers.table import Table

NET_OPLISTS, NET_TENSOR_NAME = 3, 7
OP_MAIN, OP_NAME = 2, 3
# the float vectors of each parameter table, by field number: Convolution2D / Convolution3D weight 1, bias 2;
# Scale scaleData 1, biasData 2; BatchNorm slopeData 1, meanData 2, varData 3, biasData 4; Blob float32s 7
FLOAT_FIELDS = {
    "conv": {"weight": 1, "bias": 2},
    "Scale": {"scaleData": 1, "biasData": 2},
    "BatchNorm": {"slopeData": 1, "meanData": 2, "varData": 3, "biasData": 4},
    "Const": {"float32s": 7},
}


def _field(table: Table, number: int) -> int:
    return table.Offset(4 + 2 * number)


def _string(table: Table, number: int) -> str | None:
    offset = _field(table, number)
    return table.String(offset + table.Pos).decode("utf-8", "replace") if offset else None


def _tables(table: Table, number: int) -> list[Table]:
    offset = _field(table, number)
    if not offset:
        return []
    start, count = table.Vector(offset), table.VectorLen(offset)
    return [Table(table.Bytes, table.Indirect(start + 4 * i)) for i in range(count)]


def _floats(table: Table, number: int) -> np.ndarray | None:
    offset = _field(table, number)
    if not offset:
        return None
    return np.array(table.GetVectorAsNumpy(number_types.Float32Flags, offset), np.float32)


def read_exact(path: Path, op_types: list[str]) -> list[dict[str, np.ndarray]]:
    """For every op of the model, in ``oplists`` order, the float vectors it stores (keyed as in the JSON dump).

    ``op_types``: each op's type as the JSON dump names it; it says which parameter table the union holds.
    Raises ``ValueError`` when the file does not have that many ops.
    """
    data, root = _root(path)
    ops = _tables(root, NET_OPLISTS)
    if len(ops) != len(op_types):
        raise ValueError(f"{len(ops)} ops in the file, {len(op_types)} in its JSON dump")
    arrays = []
    for op, kind in zip(ops, op_types):
        fields = FLOAT_FIELDS["conv" if kind in CONV_KINDS else kind] if (kind in CONV_KINDS or kind in FLOAT_FIELDS) \
            else {}
        offset = _field(op, OP_MAIN)
        found = {}
        if fields and offset:
            main = Table(data, 0)
            op.Union(main, offset)
            for name, number in fields.items():
                values = _floats(main, number)
                if values is not None:
                    found[name] = values
        arrays.append(found)
    return arrays


def _root(path: Path) -> tuple[bytearray, Table]:
    data = bytearray(Path(path).read_bytes())
    if len(data) < 8:
        raise ValueError("too short to be an MNN model")
    return data, Table(data, flatbuffers.encode.Get(number_types.UOffsetTFlags.packer_type, data, 0))


def tensor_names(path: Path) -> list[str]:
    """``Net.tensorName``: every tensor the model names (the ones that can be asked for at run time)."""
    _, root = _root(path)
    offset = _field(root, NET_TENSOR_NAME)
    if not offset:
        return []
    start = root.Vector(offset)
    return [root.String(start + 4 * i).decode("utf-8", "replace") for i in range(root.VectorLen(offset))]


def op_names(path: Path) -> list[str]:
    """``Op.name`` of every op, in order (to check that the file and its JSON dump line up)."""
    _, root = _root(path)
    return [_string(op, OP_NAME) or "" for op in _tables(root, NET_OPLISTS)]


CONV_KINDS = {"Convolution", "ConvolutionDepthwise", "Deconvolution", "DeconvolutionDepthwise", "Convolution3D",
              "ConvTranspose3D"}
