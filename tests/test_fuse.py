"""fusion fuse: every foldable site folded, verified within the bound, skipped sites explained, IN untouched."""

import hashlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import fusion
import fusion.testing
from fusion.cli import main
from fusion.oracle import session
from fusion.graph.fuse import fuse_model
from chain import chain_model


def model_3d(seed=0):
    """Grouped 3-D ConvTranspose + BN, then Conv3d g2 + Mul + Add, then a ConvTranspose whose output is also a
    graph output (not foldable), then a BN after a Conv whose output two nodes read (not foldable)."""
    rng = np.random.default_rng(seed)
    constants = {}

    def c(name, array):
        constants[name] = np.asarray(array, np.float32)
        return name

    bn = lambda p, n: [c(f"{p}.s", rng.uniform(0.5, 2, n)), c(f"{p}.b", rng.standard_normal(n)),  # noqa: E731
                       c(f"{p}.m", rng.standard_normal(n)), c(f"{p}.v", rng.uniform(0.2, 2, n))]
    nodes = [
        helper.make_node("ConvTranspose", ["x", c("d1.w", rng.standard_normal((8, 2, 3, 3, 3)) * 0.3),
                                           c("d1.b", rng.standard_normal(8))], ["d1"], name="d1", group=4,
                         strides=[2, 2, 2], pads=[1, 1, 1, 1, 1, 1], output_padding=[1, 1, 1]),
        helper.make_node("BatchNormalization", ["d1"] + bn("bn1", 8), ["bn1"], name="bn1", epsilon=1e-3),
        helper.make_node("Conv", ["bn1", c("c2.w", rng.standard_normal((6, 4, 3, 3, 3)) * 0.3)], ["c2"], name="c2",
                         group=2, pads=[1, 1, 1, 0, 0, 0]),
        helper.make_node("Mul", ["c2", c("mul.s", rng.uniform(0.5, 2, (6, 1, 1, 1)))], ["m2"], name="mul2"),
        helper.make_node("Add", ["m2", c("add.t", rng.standard_normal((1, 6, 1, 1, 1)))], ["a2"], name="add2"),
        helper.make_node("ConvTranspose", ["a2", c("d3.w", rng.standard_normal((6, 2, 2, 2, 2)) * 0.3)], ["d3"],
                         name="d3", group=2),
        helper.make_node("BatchNormalization", ["d3"] + bn("bn3", 4), ["bn3"], name="bn3"),
        helper.make_node("Conv", ["bn3", c("c4.w", rng.standard_normal((4, 4, 1, 1, 1)))], ["c4"], name="c4"),
        helper.make_node("BatchNormalization", ["c4"] + bn("bn4", 4), ["bn4"], name="bn4"),
        helper.make_node("Add", ["bn4", "c4"], ["y"], name="residual"),
    ]
    graph = helper.make_graph(nodes, "net3d", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 3, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 6, 6, 6]),
                               helper.make_tensor_value_info("d3", TensorProto.FLOAT, [2, 4, 6, 6, 6])],
                              [numpy_helper.from_array(v, k) for k, v in constants.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("make, folded, skipped, batch_norms_left", [
    (chain_model, {"up1 + bn1", "up2 + bn2"}, set(), 0),
    (model_3d, {"d1 + bn1", "c2 + mul2 + add2"}, {"d3", "c4"}, 2),  # bn3 and bn4 stay with their skipped convs
])
def test_fuse_folds_every_foldable_site_and_verifies(make, folded, skipped, batch_norms_left, tmp_path):
    source, target = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(make(), source)
    before = _digest(source)
    assert main(["fuse", str(source), str(target), "--json", str(tmp_path / "r.json")]) == 0
    assert _digest(source) == before
    fused = onnx.load(target)
    ops = [n.op_type for n in fused.graph.node]
    original, report, _ = fuse_model(onnx.load(source))
    assert {e["site"] for e in report.folded} == folded
    assert {e["site"] for e in report.skipped} == skipped
    # no BN/Mul/Add left at the folded sites
    tails = {name for e in report.folded for name in e["site"].split(" + ")[1:]}
    assert not tails & {n.name for n in fused.graph.node}
    assert ops.count("BatchNormalization") == batch_norms_left
    # outputs agree with the original on fresh inputs
    rng = np.random.default_rng(7)
    name, shape = fused.graph.input[0].name, [d.dim_value for d in fused.graph.input[0].type.tensor_type.shape.dim]
    x = rng.standard_normal(shape).astype(np.float32)
    for a, b in zip(session(onnx.load(source)).run(None, {name: x}), session(fused).run(None, {name: x})):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(a).max())))


def test_skip_reasons_name_the_cause(tmp_path):
    _, report, _ = fuse_model(model_3d())
    reasons = {e["site"]: e["reason"] for e in report.skipped}
    assert reasons["d3"] == "its output is a graph output"
    assert reasons["c4"] == "its output is read by 2 nodes"


def test_fuse_bad_input_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01garbage")
    assert main(["fuse", str(bad), str(tmp_path / "out.onnx")]) == 2
    assert not (tmp_path / "out.onnx").exists()
    good = tmp_path / "good.onnx"
    onnx.save(chain_model(), good)
    assert main(["fuse", str(good), str(good)]) == 2
    assert "never modified" in capsys.readouterr().err


def test_numba_paths_unfused_folded_and_epilogue_agree_within_the_bound(rng):
    x = rng.standard_normal((2, 16, 9, 9)).astype(np.float32)
    w = rng.standard_normal((16, 3, 4, 4)).astype(np.float32)
    b = rng.standard_normal(12).astype(np.float32)
    params = dict(scale=rng.uniform(0.5, 2, 12), bias=rng.standard_normal(12), mean=rng.standard_normal(12),
                  var=rng.uniform(0.2, 2, 12))
    attributes = dict(group=4, strides=[2, 2], pads=[1, 1, 1, 1])
    affine = fusion.batch_norm_affine(**params)
    unfused = fusion.batch_norm(fusion.conv_transpose(x, w, b, **attributes), **params)
    w_f, b_f = fusion.fold_batch_norm(w, b, **params, group=4, transposed=True)
    folded = fusion.conv_transpose(x, w_f, b_f, **attributes)
    epilogue = fusion.conv_transpose_channel_affine(x, w, b, affine, **attributes)
    for actual in (unfused, folded, epilogue):
        fusion.testing.assert_matches_reference(actual, op="conv_transpose", x=x, w=w, b=b, batch_norm=params,
                                                **attributes)
