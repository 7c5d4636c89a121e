"""Child process: run an ONNX model with onnxruntime (as optimized) and save one output.

    python ort_child.py MODEL FEEDS.npz OUT.npy OUTPUT
"""

import os
import sys


def main():
    import numpy as np
    import onnxruntime as ort

    model, feeds_path, out_path, output = sys.argv[1:5]
    feeds = dict(np.load(feeds_path))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # already optimized on disk
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    result = session.run([output], feeds)[0]
    with open(out_path + ".part", "wb") as handle:
        np.save(handle, result)
    os.replace(out_path + ".part", out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
