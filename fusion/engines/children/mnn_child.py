"""Child process for MNN: ``mnnconvert ARGS...`` or ``run MODEL FEEDS.npz OUT.npz OUTPUTS.json THREADS``.

``run`` asks the Module API for every tensor named in OUTPUTS.json when it loads the model, runs once, and saves
them as ``t0, t1, ...`` in that order.

Runs MNN's converter in-process through the wheel's ``_tools`` extension (never the ``mnnconvert`` console
script or ``MNN.tools``, which send telemetry and pip-install at run time). A crash here kills only this process.
"""

import os
import sys


def convert(argv):
    import _tools

    ok = _tools.mnnconvert(["mnnconvert"] + argv)
    sys.stdout.flush()
    if ok is False:
        print("mnnconvert returned failure", file=sys.stderr)
        return 3
    return 0


def run(model, feeds_path, out_path, outputs_path, threads):
    import json

    import MNN
    import numpy as np

    feeds = np.load(feeds_path)
    names = list(feeds.files)
    with open(outputs_path, encoding="utf-8") as handle:
        outputs = json.load(handle)
    runtime = MNN.nn.create_runtime_manager(({"backend": "CPU", "numThread": int(threads)},))
    try:
        module = MNN.nn.load_module_from_file(model, names, outputs, runtime_manager=runtime)
    except Exception as exc:  # MNN reports a missing tensor this way
        print(f"cannot load {model} with inputs {names} and {len(outputs)} outputs: {exc}", file=sys.stderr)
        return 4
    inputs = [MNN.expr.const(np.ascontiguousarray(feeds[n], np.float32), list(feeds[n].shape), MNN.expr.NCHW)
              for n in names]
    try:
        results = module.forward(inputs)
        results = list(results) if isinstance(results, (list, tuple)) else [results]
        if len(results) != len(outputs):
            raise RuntimeError(f"forward returned {len(results)} outputs for {len(outputs)} asked")
        arrays = {f"t{i}": np.array(MNN.expr.convert(r, MNN.expr.NCHW).read(), dtype=np.float32)
                  for i, r in enumerate(results)}
    except Exception as exc:  # MNN signals a failed resize or compute this way
        print(f"MNN produced no output ({type(exc).__name__}: {exc})".replace("\n", " "), file=sys.stderr)
        return 5
    temporary = out_path + ".part.npz"
    np.savez(temporary, **arrays)
    os.replace(temporary, out_path)
    return 0


def main():
    command, argv = sys.argv[1], sys.argv[2:]
    if command == "mnnconvert":
        return convert(argv)
    if command == "run":
        return run(*argv)
    if command == "version":
        import MNN

        print("MNN_VERSION", MNN.version())
        return 0
    print(f"unknown command {command}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
