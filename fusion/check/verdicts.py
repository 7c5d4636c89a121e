"""What a check finds, as data: per site, per watched tensor, for the whole model; and how each is written as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from fusion.compare import Comparison

# a site's status: its output is right; it computes wrongly itself; its input is already wrong (a culprit lies
# upstream); the converted model has no tensor to read its output from (folded away, or fused with what follows)
STATUSES = ("pass", "fail", "downstream", "not_exposed")


@dataclass
class ParamCheck:
    """The engine's fused parameters against ``fusion.fold``: weights and bias (bias ``None``: not judged)."""

    weight: Comparison | None
    bias: Comparison | None
    passed: bool
    kept_tail: list[str] = field(default_factory=list)


@dataclass
class SiteVerdict:
    index: int
    label: str
    description: str
    op: str
    tail: str
    group: int
    rank: int
    attributes: dict
    status: str  # one of STATUSES
    explanations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    output: Comparison | None = None
    params: ParamCheck | None = None
    failures: list[dict] = field(default_factory=list)
    held: str | None = None  # which error model the output is within: "exact", or a named legitimate behaviour
    codes: list[str] = field(default_factory=list)  # explanation codes (fusion.check.explain.Code), for grouping

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def to_dict(self) -> dict:
        data = asdict(self)
        data["attributes"] = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in self.attributes.items()}
        return data


@dataclass
class TensorCheck:
    """One tensor of the converted model against the unfused oracle, within a tolerance from the oracle's own
    sensitivity (``fusion.oracle.sensitivity``): ``spread`` is how far the oracle moved under the perturbation."""

    name: str
    node: str
    abs_max: float
    diff_max: float
    tolerance: float
    spread: float
    passed: bool
    ill_conditioned: bool = False
    shape: str | None = None  # set when the shapes differ: "engine [..], oracle [..]"
    worst_index: list[int] | None = None

    def summary(self) -> str:
        if self.shape:
            return f"shape differs: {self.shape}"
        text = f"absMaxV:{self.abs_max:.6g} - DiffMax {self.diff_max:.6g} (tolerance {self.tolerance:.3g})"
        if self.ill_conditioned:
            text += f"; ill-conditioned: the oracle itself moves by {self.spread:.3g} under a tiny perturbation"
        elif not self.passed and self.worst_index is not None:
            text += f", worst at {self.worst_index}"
        return text

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class WholeModel:
    """The converted model's graph outputs against the oracle's."""

    passed: bool
    outputs: list[TensorCheck]

    def to_dict(self) -> dict:
        return {"passed": self.passed, "outputs": [o.to_dict() for o in self.outputs]}


@dataclass
class FirstWrong:
    """The culprit: the first wrong tensor in graph order whose inputs are right, the ONNX node that writes it, and
    the index of the fusion site it belongs to (None: outside the fusion sites)."""

    tensor: str
    node: str
    site: int | None
    explanations: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ModelReport:
    model: str
    engine: str
    sites: list[SiteVerdict]
    seconds: float
    seed: int
    mode: str = "whole"  # "whole": the whole converted model judged; "sites": each site cut out and converted alone
    whole_model: WholeModel | None = None
    first_wrong: FirstWrong | None = None
    tensors: list[TensorCheck] = field(default_factory=list)  # every watched tensor against the oracle, graph order
    stages: list[TensorCheck] = field(default_factory=list)  # the same, each on the engine's inputs to its stage
    explanations: list[str] = field(default_factory=list)  # model-level findings (conversion failed, ...)
    notes: list[str] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    input_shapes: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        whole_ok = self.whole_model is None or self.whole_model.passed
        return whole_ok and not self.failures and self.first_wrong is None and \
            all(site.status in ("pass", "not_exposed") for site in self.sites)

    def to_dict(self) -> dict:
        return {"model": self.model, "engine": self.engine, "mode": self.mode, "seed": self.seed,
                "seconds": round(self.seconds, 3), "passed": self.passed,
                "input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
                "whole_model": None if self.whole_model is None else self.whole_model.to_dict(),
                "first_wrong": None if self.first_wrong is None else self.first_wrong.to_dict(),
                "explanations": self.explanations, "notes": self.notes, "failures": self.failures,
                "sites": [site.to_dict() for site in self.sites], "tensors": [t.to_dict() for t in self.tensors],
                "stages": [t.to_dict() for t in self.stages]}
