"""Child process for the ncnn runtime. Command (an error is one line on stderr and exit code 5;
``serve`` answers many, see ``one_line``):

    run MODEL.param MODEL.bin FEEDS.npz OUT.npz BLOBS.json
        FEEDS.npz holds each input under its ncnn blob name, batch first; BLOBS.json lists the blobs to save as
        t0, t1, ... ncnn has no batch axis: each sample is run on its own (one thread, float32 storage and
        arithmetic: no fp16, no bf16) and the results are stacked on a new first axis.
"""

import json
import os
import sys


def run(param, weights, feeds_path, out_path, blobs_path):
    import ncnn
    import numpy as np

    feeds = dict(np.load(feeds_path))
    with open(blobs_path, encoding="utf-8") as handle:
        blobs = json.load(handle)
    net = ncnn.Net()
    for option in ("use_fp16_storage", "use_fp16_arithmetic", "use_fp16_packed", "use_bf16_storage",
                   "use_bf16_packed", "use_vulkan_compute"):
        setattr(net.opt, option, False)
    net.opt.num_threads = 1
    with open(param, encoding="utf-8", errors="replace") as handle:
        kinds = {line.split()[0] for line in handle.readlines()[2:] if line.split()}
    unknown = sorted(kind for kind in kinds if ncnn.layer_to_index(kind) < 0)
    if unknown:  # ncnn would only print this on its own stderr
        raise RuntimeError(f"ncnn has no layer type {', '.join(unknown)}: pnnx left the op unconverted")
    if net.load_param(param) != 0 or net.load_model(weights) != 0:
        raise RuntimeError("ncnn could not load the model (an op it does not have, or a damaged file)")
    batch = {value.shape[0] for value in feeds.values()}
    if len(batch) != 1:
        raise ValueError(f"inputs disagree on the batch size {sorted(batch)}")
    samples = []
    for n in range(batch.pop()):
        with net.create_extractor() as extractor:
            for name, value in feeds.items():
                extractor.input(name, ncnn.Mat(np.ascontiguousarray(value[n], np.float32)).clone())
            found = []
            for blob in blobs:
                status, mat = extractor.extract(blob)
                if status != 0:
                    raise RuntimeError(f"ncnn could not compute blob {blob!r} (status {status})")
                found.append(np.array(mat.numpy(), np.float32))
            samples.append(found)
    arrays = {f"t{i}": np.stack([sample[i] for sample in samples]) for i in range(len(blobs))}
    np.savez(out_path + ".part.npz", **arrays)
    os.replace(out_path + ".part.npz", out_path)


def main():
    from one_line import main_or_serve

    commands = {"run": run}
    return main_or_serve(lambda argv: commands[argv[0]](*argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
