"""Child process for MNN: ``mnnconvert ARGS...`` or ``run MODEL FEEDS.npz OUT.npy OUTPUT THREADS``.

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


def run(model, feeds_path, out_path, output, threads):
    import MNN
    import numpy as np

    feeds = np.load(feeds_path)
    names = list(feeds.files)
    runtime = MNN.nn.create_runtime_manager(({"backend": "CPU", "numThread": int(threads)},))
    try:
        module = MNN.nn.load_module_from_file(model, names, [output], runtime_manager=runtime)
    except Exception as exc:  # MNN reports a missing tensor this way
        print(f"cannot load {model} with inputs {names} and output {output}: {exc}", file=sys.stderr)
        return 4
    inputs = [MNN.expr.const(np.ascontiguousarray(feeds[n], np.float32), list(feeds[n].shape), MNN.expr.NCHW)
              for n in names]
    try:
        result = module.forward(inputs)
        result = result[0] if isinstance(result, (list, tuple)) and result else result
        if isinstance(result, (list, tuple)):
            raise RuntimeError("forward returned no output")
        array = np.array(MNN.expr.convert(result, MNN.expr.NCHW).read(), dtype=np.float32)
    except Exception as exc:  # MNN signals a failed resize or compute this way
        print(f"MNN produced no output ({type(exc).__name__}: {exc})".replace("\n", " "), file=sys.stderr)
        return 5
    temporary = out_path + ".part"
    with open(temporary, "wb") as handle:
        np.save(handle, array)
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
