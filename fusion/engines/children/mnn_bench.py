"""Persistent MNN timing child. Reads commands from stdin, one per line, answers one line each:

    load NAME MODEL INPUT_NAME OUTPUT_NAME SHAPE(comma) THREADS SEED  -> "ok" or "error ..."
    time NAME                                                        -> seconds of one forward pass
    quit

Timing happens here, around ``forward`` and the read of the output only, so process start-up is not timed and the
parent can interleave MNN with other engines run to run.
"""

import os
import sys
import time


def main():
    # MNN prints to the C-level stdout (a banner at import, messages later): keep the protocol on a private copy of
    # stdout and send fd 1 to stderr, so no stray line ever lands in an answer
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    import MNN
    import numpy as np

    modules, inputs = {}, {}
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        try:
            if words[0] == "load":
                name, model, input_name, output_name, shape, threads, seed = words[1:8]
                runtime = MNN.nn.create_runtime_manager(({"backend": "CPU", "numThread": int(threads)},))
                modules[name] = MNN.nn.load_module_from_file(model, [input_name], [output_name],
                                                            runtime_manager=runtime)
                dims = [int(d) for d in shape.split(",")]
                x = np.random.default_rng(int(seed)).standard_normal(dims).astype(np.float32)
                inputs[name] = MNN.expr.const(x, dims, MNN.expr.NCHW)
                answer = "ok"
            elif words[0] == "time":
                module, x = modules[words[1]], inputs[words[1]]
                start = time.perf_counter()
                y = module.forward(x)
                MNN.expr.convert(y, MNN.expr.NCHW).read()
                answer = repr(time.perf_counter() - start)
            elif words[0] == "quit":
                return 0
            else:
                answer = f"error unknown command {words[0]}"
        except Exception as exc:  # report and keep serving: one bad model must not end the run
            answer = f"error {type(exc).__name__}: {exc}".replace("\n", " ")
        print(answer, file=protocol, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
