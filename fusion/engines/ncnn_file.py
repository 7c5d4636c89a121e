"""Read an ncnn model (``.param`` text, ``.bin`` weights) exactly as ncnn's loader does, without ncnn.

``.param``: a magic line ``7767517``, ``layer_count blob_count``, then one line a layer:
``Type name n_bottoms n_tops bottoms... tops... key=value...``; a key ``-23300 - k`` holds the array ``n,v1,...``
of key ``k``. ``.bin``: each weighted layer's arrays in layer order. A weight array is *tagged*: a 4-byte tag
(0: float32 follows; ``0x01306B47``: float16, padded to 4 bytes), a bias or statistic is raw float32.

Layouts (checked against pnnx's own float32 tensors): Convolution* ``(C_out, C_in/group, *k)`` as ONNX Conv;
Deconvolution* per group ``(C_out/group, C_in/group, *k)``, i.e. ONNX ConvTranspose's first two axes swapped within
each group.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FLOAT32_TAG, FLOAT16_TAG = 0, 0x01306B47
TOKEN = re.compile(r'(?:[^\s"]+|"[^"]*")+')  # whitespace-separated, a quoted value may hold spaces
CONV_TYPE = re.compile(r"^(Convolution|Deconvolution)(DepthWise)?(1D|3D)?$")
# layers ncnn gives no weights: reading past them is safe. A layer of any other type whose data this module does not
# read ends the reading (what follows it in the .bin cannot be located).
WEIGHTLESS = frozenset("""
    Input Split Concat Slice Crop Padding Reshape Flatten Permute Squeeze ExpandDims Tile Noop Dropout Cast Interp
    ReLU Sigmoid TanH Clip HardSigmoid HardSwish Swish Mish ELU SELU GELU Softplus Erf Exp Log Power Threshold AbsVal
    BNLL UnaryOp BinaryOp Eltwise Reduction Softmax LogSoftmax ArgMax Pooling Pooling1D Pooling3D ShuffleChannel
    PixelShuffle Reorg CopyTo Fold Unfold GridSample MatMul CumulativeSum Shrink Spectrogram
    """.split())


@dataclass
class Layer:
    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[int, object]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    float16: bool = False  # its weight is stored in float16

    def int(self, key: int, default: int = 0) -> int:
        return int(self.params.get(key, default))

    @property
    def conv(self) -> re.Match | None:
        return CONV_TYPE.match(self.type)


@dataclass
class NcnnModel:
    layers: list[Layer]
    readable: int  # how many leading layers have their arrays read (all of them, unless an unknown type stopped it)
    stopped_by: str | None = None

    def consumers(self, blob: str) -> list[Layer]:
        return [layer for layer in self.layers if blob in layer.bottoms]

    def producer(self, blob: str) -> Layer | None:
        return next((layer for layer in self.layers if blob in layer.tops), None)


def _value(text: str):
    if text.startswith('"'):
        return text.strip('"')  # a shape expression (Reshape's 6=...), kept as written
    return float(text) if any(c in text for c in ".eE") else int(text)


def read_param(path: Path) -> list[Layer]:
    """The layers of an ncnn ``.param`` file; raises ``ValueError`` naming the line that is not ncnn's."""
    lines = [TOKEN.findall(line) for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
             if line.strip()]
    if not lines or lines[0] != ["7767517"]:
        raise ValueError(f"{path} is not an ncnn .param file (no 7767517 magic line)")
    layers = []
    for number, words in enumerate(lines[2:], start=3):
        try:
            kind, name, n_bottoms, n_tops = words[0], words[1], int(words[2]), int(words[3])
            blobs = words[4:4 + n_bottoms + n_tops]
            params: dict[int, object] = {}
            for item in words[4 + n_bottoms + n_tops:]:
                key, _, value = item.partition("=")
                k = int(key)
                if k <= -23300 and not value.startswith('"'):
                    values = [_value(v) for v in value.split(",")]
                    params[-23300 - k] = values[1:1 + int(values[0])]
                else:
                    params[k] = _value(value)
        except (IndexError, ValueError) as exc:
            raise ValueError(f"{path}: line {number} is not an ncnn layer line ({exc})") from None
        layers.append(Layer(kind, name, blobs[:n_bottoms], blobs[n_bottoms:], params))
    return layers


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def raw(self, count: int) -> np.ndarray:
        end = self.at + 4 * count
        if end > len(self.data):
            raise ValueError("the .bin ends early")
        array = np.frombuffer(self.data, "<f4", count, self.at).copy()
        self.at = end
        return array

    def tagged(self, count: int) -> tuple[np.ndarray, bool]:
        tag = int.from_bytes(self.data[self.at:self.at + 4], "little")
        self.at += 4
        if tag == FLOAT32_TAG:
            return self.raw(count), False
        if tag == FLOAT16_TAG:
            size = (2 * count + 3) // 4 * 4
            if self.at + size > len(self.data):
                raise ValueError("the .bin ends early")
            array = np.frombuffer(self.data, "<f2", count, self.at).astype(np.float32)
            self.at += size
            return array, True
        raise ValueError(f"weight tag {tag:#x} (quantized weights) is not read")


def _read_arrays(layer: Layer, reader: _Reader) -> bool:
    """Read ``layer``'s arrays; False when its type's data is not known to this module."""
    p = layer.int
    if layer.conv:
        dynamic = 28 if layer.type.startswith("Deconvolution") else 19  # Deconvolution's 19 is an output pad
        if p(dynamic) or p(8):  # weights from a second input; int8 scales
            return p(8) == 0
        layer.arrays["weight"], layer.float16 = reader.tagged(p(6))
        if p(5):
            layer.arrays["bias"] = reader.raw(p(0))
    elif layer.type == "InnerProduct":
        if p(8):
            return False
        layer.arrays["weight"], layer.float16 = reader.tagged(p(2))
        if p(1):
            layer.arrays["bias"] = reader.raw(p(0))
    elif layer.type == "BatchNorm":
        for name in ("slope", "mean", "variance", "bias"):
            layer.arrays[name] = reader.raw(p(0))
    elif layer.type == "Scale":
        if p(0) != -233:  # -233: the scale comes from a second input, and nothing is stored
            layer.arrays["scale"] = reader.raw(p(0))
            if p(1):
                layer.arrays["bias"] = reader.raw(p(0))
    elif layer.type == "MemoryData":
        w, h, d, c = p(0), p(1), p(11), p(2)
        count = w * h * d * c if d else w * h * c if c else w * h if h else w if w else 1
        layer.arrays["data"] = reader.raw(count)
    elif layer.type == "PReLU":
        layer.arrays["slope"] = reader.raw(p(0))
    elif layer.type in ("LayerNorm", "RMSNorm"):
        if p(2):
            layer.arrays["gamma"] = reader.raw(p(0))
            if layer.type == "LayerNorm":
                layer.arrays["beta"] = reader.raw(p(0))
    elif layer.type in ("InstanceNorm", "GroupNorm"):
        channels = p(0) if layer.type == "InstanceNorm" else p(1)
        if p(2 if layer.type == "InstanceNorm" else 3):
            layer.arrays["gamma"], layer.arrays["beta"] = reader.raw(channels), reader.raw(channels)
    elif layer.type not in WEIGHTLESS:
        return False
    return True


def read_model(param: Path, weights: Path) -> NcnnModel:
    """The layers and, for every layer up to the first whose data this module cannot locate, their arrays."""
    layers = read_param(param)
    reader = _Reader(Path(weights).read_bytes())
    for index, layer in enumerate(layers):
        try:
            known = _read_arrays(layer, reader)
        except ValueError as exc:
            return NcnnModel(layers, index, f"{layer.type} {layer.name!r}: {exc}")
        if not known:
            return NcnnModel(layers, index, f"{layer.type} {layer.name!r}")
    if reader.at != len(reader.data):
        # every type was known, yet bytes are left: some layer holds more than this module read; trust none of it
        return NcnnModel(layers, 0, f"no layer: {len(reader.data) - reader.at} bytes of the .bin were left over, "
                                    "so no array could be placed")
    return NcnnModel(layers, len(layers))


def onnx_weight(layer: Layer, shape: tuple[int, ...], group: int) -> np.ndarray:
    """The layer's weight in the ONNX layout ``shape`` of its op (Conv, or ConvTranspose ``(C_in, C_out/g, *k)``)."""
    weight = layer.arrays["weight"]
    if layer.type.startswith("Deconvolution"):
        c_in, c_out_g, kernel = shape[0], shape[1], shape[2:]
        per_group = weight.reshape((group, c_out_g, c_in // group) + tuple(kernel))
        return np.swapaxes(per_group, 1, 2).reshape(shape)
    return weight.reshape(shape)
