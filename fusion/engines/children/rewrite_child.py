"""Child process for the ONNX-to-ONNX optimizers: ``TOOL MODEL REWRITTEN`` saves MODEL as TOOL rewrites it.

TOOL is ``onnxscript`` (``onnxscript.optimizer.optimize``, what ``torch.onnx.export`` runs), ``onnxslim``
(``onnxslim.slim``) or ``onnxruntime-LEVEL`` (``basic``, ``extended`` or ``all``: the model onnxruntime writes at that
graph optimization level). An error is one line on stderr and exit code 5; ``serve`` answers many (``one_line``).
"""

import sys


def rewrite(tool, model_path, out_path):
    import onnx

    if tool == "onnxscript":
        from onnxscript import optimizer

        onnx.save(optimizer.optimize(onnx.load(model_path)), out_path)
    elif tool == "onnxslim":
        import onnxslim

        onnx.save(onnxslim.slim(onnx.load(model_path)), out_path)
    elif tool.startswith("onnxruntime-"):
        import onnxruntime as ort

        levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        ort.set_default_logger_severity(4)
        options = ort.SessionOptions()
        options.graph_optimization_level = levels[tool.split("-", 1)[1]]
        options.optimized_model_filepath = out_path
        ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    else:
        raise ValueError(f"unknown tool {tool}")


def main():
    from one_line import main_or_serve

    return main_or_serve(lambda argv: rewrite(*argv))


if __name__ == "__main__":
    sys.exit(main())
