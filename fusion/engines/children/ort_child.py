"""Child process for onnxruntime. Commands (an error is one line on stderr and exit code 5;
``serve`` answers many, see ``one_line``):

    run MODEL FEEDS.npz OUT.npz OUTPUTS.json   run an already optimized MODEL; save the tensors named in
                                               OUTPUTS.json as t0, t1, ... (intermediate ones are exposed)
"""

import os
import sys


def run(model, feeds_path, out_path, outputs_path):
    import json

    import numpy as np
    import onnx
    import onnxruntime as ort

    feeds = dict(np.load(feeds_path))
    with open(outputs_path, encoding="utf-8") as handle:
        outputs = json.load(handle)
    graph = onnx.load(model)
    declared = {o.name for o in graph.graph.output}
    for name in outputs:
        if name not in declared and name not in feeds:
            graph.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # already optimized on disk
    session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    wanted = [n for n in outputs if n not in feeds]
    values = dict(zip(wanted, session.run(wanted, feeds)))
    values.update({n: feeds[n] for n in outputs if n in feeds})
    np.savez(out_path + ".part.npz", **{f"t{i}": values[n] for i, n in enumerate(outputs)})
    os.replace(out_path + ".part.npz", out_path)


def main():
    import onnxruntime as ort

    ort.set_default_logger_severity(4)  # its own log lines would bury the one-line reason below
    from one_line import main_or_serve

    commands = {"run": run}
    return main_or_serve(lambda argv: commands[argv[0]](*argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
