"""Child process for onnxruntime. Commands (an error is one line on stderr and exit code 5):

    optimize MODEL OPTIMIZED   save MODEL as onnxruntime optimizes it (ORT_ENABLE_ALL)
    run MODEL FEEDS.npz OUT.npy OUTPUT   run an already optimized MODEL and save one output
"""

import os
import sys


def optimize(model, optimized):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = optimized
    ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def run(model, feeds_path, out_path, output):
    import numpy as np
    import onnxruntime as ort

    feeds = dict(np.load(feeds_path))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # already optimized on disk
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    result = session.run([output], feeds)[0]
    with open(out_path + ".part", "wb") as handle:
        np.save(handle, result)
    os.replace(out_path + ".part", out_path)


def main():
    import onnxruntime as ort

    ort.set_default_logger_severity(4)  # its own log lines would bury the one-line reason below
    command, argv = sys.argv[1], sys.argv[2:]
    try:
        {"optimize": optimize, "run": run}[command](*argv)
    except Exception as error:  # onnxruntime raises its own types; the parent wants the reason on one line
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        print(f"{type(error).__name__}: {reason}", file=sys.stderr)
        return 5
    return 0


if __name__ == "__main__":
    sys.exit(main())
