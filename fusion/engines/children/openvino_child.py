"""Child process for OpenVINO. Commands (an error is one line on stderr and exit code 5;
``serve`` answers many, see ``one_line``):

    convert MODEL.onnx MODEL.xml   read_model, the offline MOC transformations that ``ovc`` applies (constant folding
                                   and smart reshape), save_model with float32 weights (no fp16 compression)
    run MODEL.xml FEEDS.npz OUT.npz OUTPUTS.json   add the tensors named in OUTPUTS.json as outputs of the
                                   transformed model, compile it for CPU with float32 inference precision (the CPU's
                                   default can be bf16), infer once, save them as t0, t1, ...
    names MODEL.xml NAMES.json     every tensor name of the transformed model
    params MODEL.xml OUT.npz TENSOR   the conv op behind TENSOR: its weight (OpenVINO layout), its type, and the bias
                                   an Add after it holds, if any
"""

import json
import os
import sys


def _core():
    import openvino as ov

    return ov, ov.Core()


def convert(model_path, xml_path):
    from openvino._offline_transformations import apply_moc_transformations

    ov, core = _core()
    model = core.read_model(model_path)
    apply_moc_transformations(model, cf=True, smart_reshape=True)
    ov.save_model(model, xml_path, compress_to_fp16=False)


def names(xml_path, names_path):
    _, core = _core()
    model = core.read_model(xml_path)
    found = sorted({name for op in model.get_ordered_ops() for port in op.outputs() for name in port.get_names()})
    with open(names_path, "w", encoding="utf-8") as handle:
        json.dump(found, handle)


def run(xml_path, feeds_path, out_path, outputs_path):
    import numpy as np

    _, core = _core()
    model = core.read_model(xml_path)
    with open(outputs_path, encoding="utf-8") as handle:
        outputs = json.load(handle)
    feeds = dict(np.load(feeds_path))
    present = {name for port in model.outputs for name in port.get_names()}
    wanted = [name for name in outputs if name not in present and name not in feeds]
    if wanted:
        model.add_outputs(wanted)
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled(feeds)
    by_name = {}
    for port, value in result.items():
        for name in port.get_names():
            by_name[name] = value
    arrays = {f"t{i}": np.asarray(feeds[name] if name in feeds else by_name[name], np.float32)
              for i, name in enumerate(outputs)}
    np.savez(out_path + ".part.npz", **arrays)
    os.replace(out_path + ".part.npz", out_path)


CONVS = {"Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData"}


def _constant(output):
    node = output.get_node()
    while node.get_type_name() in ("Convert", "Reshape", "Squeeze", "Unsqueeze") and node.get_type_name() != "Constant":
        node = node.input_value(0).get_node()
    return node.get_data() if node.get_type_name() == "Constant" else None


def params(xml_path, out_path, tensor):
    import numpy as np

    _, core = _core()
    model = core.read_model(xml_path)
    writer = next((op for op in model.get_ordered_ops() for port in op.outputs() if tensor in port.get_names()), None)
    if writer is None:
        raise LookupError(f"no tensor {tensor!r} in the transformed model")
    bias = None
    if writer.get_type_name() == "Add":
        conv = next((v.get_node() for v in writer.input_values() if v.get_node().get_type_name() in CONVS), None)
        other = next((v for v in writer.input_values() if v.get_node() is not conv), None)
        bias = None if other is None else _constant(other)
        writer = conv
    if writer is None or writer.get_type_name() not in CONVS:
        raise LookupError(f"{tensor!r} is not written by a convolution (or one and its bias Add)")
    weight = _constant(writer.input_value(1))
    if weight is None:
        raise LookupError(f"the weight of {writer.get_friendly_name()!r} is not a constant")
    arrays = {"weight": np.asarray(weight, np.float32), "type": np.array(writer.get_type_name())}
    if bias is not None:
        arrays["bias"] = np.asarray(bias, np.float32).reshape(-1)
    np.savez(out_path, **arrays)


def main():
    from one_line import main_or_serve

    commands = {"convert": convert, "names": names, "run": run, "params": params}
    return main_or_serve(lambda argv: commands[argv[0]](*argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
