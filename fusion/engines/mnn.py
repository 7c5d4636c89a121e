"""The MNN adapter: convert with the wheel's converter (or the user's ``MNNConvert``), dump to JSON, run on CPU.

Every step runs in a child process (``isolate.run_step``): MNN can abort the process on some models. Any tensor the
converted model still names can be read at run time: it is asked for when the model is loaded (MNN's Module API),
never marked as an output at conversion, which would change what the converter fuses.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusion.engines.base import EngineFailure, EngineParams
from fusion.engines.isolate import last_words, python_child, run_step, tensors_from_child
from fusion.engines.mnn_file import read_exact, tensor_names
from fusion.engines.mnn_json import MnnGraph
from fusion.graph.model import load
from fusion.graph.sites import find_sites


@dataclass
class MnnModel:
    """A converted model (``path``, what is run); its JSON dump, read when parameters are first asked for."""

    path: Path
    workdir: Path
    dumped: MnnGraph | None = None


class MnnEngine:
    """MNN on CPU. ``converter``: path of an ``MNNConvert`` binary to use instead of the wheel's ``_tools``."""

    name = "MNN"

    def __init__(self, converter: str | None = None, *, timeout: float = 120.0, threads: int = 1,
                 convert_args: tuple[str, ...] = ()):
        self.converter = converter
        self.timeout = timeout
        self.threads = threads
        self.convert_args = tuple(convert_args)
        self._version: str | None = None

    def _converter(self) -> list[str]:
        return [self.converter] if self.converter else python_child("mnn_child.py") + ["mnnconvert"]

    def version(self) -> str:
        """``MNN x.y.z`` of the installed runtime (asked once, in a child process)."""
        if self._version is None:
            text = run_step(python_child("mnn_child.py") + ["version"], engine=self.name, stage="starting",
                            timeout=self.timeout)
            version = next((line.split()[-1] for line in text.splitlines() if line.startswith("MNN_VERSION")), "?")
            self._version = f"MNN {version}" + (f" (converter {self.converter})" if self.converter else "")
        return self._version

    def convert(self, onnx_path: Path, mnn_path: Path) -> None:
        """Convert with the converter's defaults (plus ``convert_args``)."""
        said = run_step(self._converter() + ["-f", "ONNX", "--modelFile", str(onnx_path), "--MNNModel",
                                             str(mnn_path), "--bizCode", "fusion", *self.convert_args],
                        engine=self.name, stage="converting", timeout=self.timeout)
        if not mnn_path.is_file() or mnn_path.stat().st_size == 0:
            raise EngineFailure(self.name, "converting", "error", f"the converter wrote no model: {last_words(said)}")

    def dump(self, mnn_path: Path, json_path: Path) -> MnnGraph:
        """The model's JSON dump, with every op's float vectors read exactly from the ``.mnn`` file."""
        run_step(self._converter() + ["-f", "MNN", "--modelFile", str(mnn_path), "--JsonFile", str(json_path)],
                 engine=self.name, stage="reading the converted model", timeout=self.timeout)
        weights = mnn_path.with_name(mnn_path.name + ".weight")
        try:
            with open(json_path, encoding="utf-8") as handle:
                doc = json.load(handle)
        except (OSError, ValueError) as exc:
            raise EngineFailure(self.name, "reading the converted model", "error",
                                f"no readable JSON dump ({exc})") from None
        try:
            exact = read_exact(mnn_path, [op.get("type", "") for op in doc.get("oplists") or []])
        except Exception:  # an unreadable FlatBuffer: the text values, with their resolution accounted for
            exact = None
        return MnnGraph(doc, str(weights) if weights.is_file() else None, exact)

    def graph(self, prepared: MnnModel) -> MnnGraph:
        if prepared.dumped is None:
            prepared.dumped = self.dump(prepared.path, prepared.workdir / (prepared.path.stem + ".json"))
        return prepared.dumped

    def pack(self, json_path: Path, mnn_path: Path) -> None:
        """Write ``mnn_path`` from a (possibly edited) JSON dump, atomically."""
        partial = mnn_path.with_name(mnn_path.name + ".part")
        run_step(self._converter() + ["-f", "JSON", "--modelFile", str(json_path), "--MNNModel", str(partial),
                                      "--bizCode", "fusion"],
                 engine=self.name, stage="writing a model from JSON", timeout=self.timeout)
        os.replace(partial, mnn_path)

    def prepare(self, onnx_path: Path, workdir: Path) -> MnnModel:
        """Convert the model as a user would, with the converter's defaults."""
        onnx_path, workdir = Path(onnx_path), Path(workdir)
        mnn_path = workdir / (onnx_path.stem + ".mnn")
        self.convert(onnx_path, mnn_path)
        return MnnModel(mnn_path, workdir)

    def load(self, artifact: Path, workdir: Path) -> MnnModel:
        prepared = MnnModel(Path(artifact), Path(workdir))
        self.graph(prepared)  # an unreadable file is bad input: say so before anything runs
        self.tensor_names(prepared)
        return prepared

    def tensor_names(self, prepared: MnnModel) -> set[str]:
        """The tensors the converted model names, each of which can be read at run time."""
        try:
            return set(tensor_names(prepared.path))
        except Exception as exc:  # a damaged FlatBuffer raises struct or index errors
            raise EngineFailure(self.name, "reading the converted model", "error",
                                f"{prepared.path} is not a readable MNN model ({type(exc).__name__})") from None

    def run(self, prepared: MnnModel, feeds: dict[str, np.ndarray], output: str) -> np.ndarray:
        return self.run_many(prepared, feeds, [output])[output]

    def run_many(self, prepared: MnnModel, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        """Run once on ``feeds`` and return the tensors ``outputs``, each as float32 in NCHW order."""
        def command(feeds_path, out_path, names_path):
            return python_child("mnn_child.py") + ["run", str(prepared.path), feeds_path, out_path, names_path,
                                                   str(self.threads)]

        try:
            return tensors_from_child(command, feeds, outputs, engine=self.name, timeout=self.timeout)
        except EngineFailure as failure:
            if failure.kind == "error" and "Can't find output" in failure.detail:
                missing = [n for n in outputs if n not in self.tensor_names(prepared)]
                detail = ("the converted model is empty: the converter dropped every op yet reported success"
                          if self.graph(prepared).is_empty else
                          f"the converted model has no tensor {(missing or outputs)[0]!r} to read")
                raise EngineFailure(self.name, "running", "missing", detail) from None
            raise

    def site_params(self, prepared: MnnModel, site) -> EngineParams:
        return self.graph(prepared).site_params(site, self.name)

    def rewrite(self, onnx_path: Path, out_path: Path, edits: dict, workdir: Path) -> None:
        """Convert ``onnx_path`` and write to ``out_path`` a model whose sites named in ``edits``
        (``{conv_output: (w, b)}``, ``None`` keeps that part) carry the given fused parameters.

        Goes through the JSON dump; every other conv op is written back with its exact values (the dump alone
        would round them to six decimals). Reproduces converter defects (e.g. the MNN <= 2.9.1 per-group
        misindexing) in a real converted model.
        """
        workdir = Path(workdir)
        prepared = self.prepare(Path(onnx_path), workdir)  # the model as converted, and its exact parameters
        graph = self.dump(prepared.path, workdir / "rewrite.json")
        for site in find_sites(load(onnx_path)):
            try:
                params = self.site_params(prepared, site)
            except EngineFailure:
                continue
            w, b = edits.get(site.conv_output, (None, None))
            graph.set_site_params(site, params.w if w is None else w,
                                  params.b if b is None and params.b is not None else b)
        edited = workdir / "rewrite-edited.json"
        edited.write_text(json.dumps(graph.doc))
        self.pack(edited, Path(out_path))
