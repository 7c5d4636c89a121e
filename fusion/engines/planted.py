"""An engine with planted defects, computed with this package's own kernels: for testing campaigns and checks.

``defect`` is one of ``none``, ``legacy_fold`` (MNN <= 2.9.1 per-group misindexing on ConvTranspose),
``drop_bias_rank`` (the fused bias is lost on sites of rank ``rank``), ``crash_3d`` (the "converter" aborts on
3-D sites, in a real child process) or ``unrepeatable_3d`` (each conversion of a 3-D site after its first gives a
model that returns -8.8e37 in output channel 1: MNN 3.6.1 now and then converts a 3-D site wrongly). It needs no
converter, so a sweep against it runs in seconds.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusion import known_wrong_folds, ops
from fusion.engines.base import EngineParams
from fusion.engines.isolate import run_step
from fusion.fold import fold_affine
from fusion.graph.model import load
from fusion.graph.sites import Site, find_sites

DEFECTS = ("none", "legacy_fold", "drop_bias_rank", "crash_3d", "unrepeatable_3d")


@dataclass
class PlantedModel:
    path: Path
    site: Site
    conversion: int = 1  # how many times the engine has converted a model of this file name


class PlantedEngine:
    name = "planted"
    converts_whole_models = False  # one site a model: a sweep gives it sites without a context

    def __init__(self, defect: str = "legacy_fold", *, rank: int = 2):
        if defect not in DEFECTS:
            raise ValueError(f"defect must be one of {DEFECTS}")
        self.defect, self.rank = defect, rank
        self.conversions: dict[str, int] = {}

    def version(self) -> str:
        return f"planted engine ({self.defect}{f', rank {self.rank}' if self.defect == 'drop_bias_rank' else ''})"

    def prepare(self, onnx_path: Path, workdir: Path) -> PlantedModel:
        (site,) = find_sites(load(onnx_path))
        if self.defect == "crash_3d" and site.rank == 3:
            run_step([sys.executable, "-c", "import os; os.abort()"], engine=self.name, stage="converting",
                     timeout=30)
        conversion = self.conversions[Path(onnx_path).name] = self.conversions.get(Path(onnx_path).name, 0) + 1
        return PlantedModel(Path(onnx_path), site, conversion)

    def load(self, artifact: Path, workdir: Path) -> PlantedModel:
        return self.prepare(artifact, workdir)

    def tensor_names(self, prepared: PlantedModel) -> set[str]:
        return {prepared.site.input_name, prepared.site.output_name}

    def run_many(self, prepared: PlantedModel, feeds: dict, outputs: list[str]) -> dict[str, np.ndarray]:
        y = self.run(prepared, feeds, prepared.site.output_name)
        return {name: feeds[name] if name in feeds else y for name in outputs}

    def _params(self, site: Site) -> tuple[np.ndarray, np.ndarray]:
        if site.affine is None:
            w, b = site.w, np.zeros(site.c_out, site.w.dtype) if site.b is None else site.b
        elif self.defect == "legacy_fold" and site.transposed:
            w, b = known_wrong_folds.fold_mnn_legacy(site.w, site.b, site.affine, group=site.group)
        else:
            w, b = fold_affine(site.w, site.b, site.affine, group=site.group, transposed=site.transposed)
        if self.defect == "drop_bias_rank" and site.rank == self.rank:
            b = np.zeros_like(b)
        return w, b

    def run(self, prepared: PlantedModel, feeds: dict, output: str) -> np.ndarray:
        site = prepared.site
        w, b = self._params(site)
        convolve = ops.conv_transpose if site.transposed else ops.conv
        y = convolve(np.asarray(feeds[site.input_name], np.float32), w, b, **site.attributes)
        if self.defect == "unrepeatable_3d" and site.rank == 3 and prepared.conversion > 1:
            y[:, 1] = -8.8e37
        return y

    def site_params(self, prepared: PlantedModel, site: Site) -> EngineParams:
        w, b = self._params(prepared.site)
        return EngineParams(w=w, b=b, ops=["planted"])
