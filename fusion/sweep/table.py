"""What a campaign says about each kind of fold: per (op, rank, group kind) and tail, how many configurations the
engine folded right, left unfused (kept the tail as an op of its own, computed right), or got wrong.

Only configurations whose tail may legally be folded are counted (per-channel constants in initializers, the conv's
output read by the tail alone); the context configurations are counted apart, by context. A failure on a
configuration that onnxruntime with optimizations off already gets wrong is counted as the runtime's when the
engine's model runs on onnxruntime (the ONNX rewriters): the rewriter's fold is not what failed. A failure whose
group shrank to a reproducer without a tail (the conversion fails whatever follows the conv: an attribute the engine
does not handle) is not the fold's either: ``other``.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from fusion.graph.build import SiteSpec

TAIL_COLUMNS = {"bn": "BN", "mul": "Mul", "add": "Add", "mul_add": "Mul+Add"}
CLASSES = ("folded", "kept", "right", "wrong", "other", "runtime")
KEPT_NOTE = "not folded: the converter kept"
UNREAD_NOTE = "fused parameters not judged"


def group_kind(spec: dict) -> str:
    c_in, group = spec["input_shape"][1], spec["group"]
    if group == 1:
        return "group 1"
    return "depthwise" if group == c_in else "grouped"


def row_key(spec: dict) -> str:
    return f"{spec['op']} {len(spec['kernel_shape'])}-D {group_kind(spec)}"


def classify(outcome, runtime_agrees, tail_free=lambda outcome: False) -> str | None:
    """``folded``, ``kept``, ``wrong``, ``other`` or ``runtime`` (see the module); None when not judged.
    ``runtime_agrees(spec)`` is None for an engine with its own runtime, else tells whether onnxruntime computes the
    unfused spec right; ``tail_free(outcome)``: whether the outcome's failure group fails without a tail."""
    if outcome.status == "unjudged":
        return None
    if outcome.status == "fail":
        if runtime_agrees is not None and not runtime_agrees(SiteSpec.from_dict(outcome.spec)):
            return "runtime"
        return "other" if tail_free(outcome) else "wrong"
    if any(note.startswith(KEPT_NOTE) or note.startswith(UNREAD_NOTE) for note in outcome.notes):
        return "kept"
    return "folded"


def fold_table(outcomes, runtime_agrees=None, tail_free=lambda outcome: False) -> dict:
    """``{"folds": {row: {tail column: {class: count}}}, "contexts": {context: {class: count}}}``."""
    folds: dict = defaultdict(lambda: defaultdict(Counter))
    contexts: dict = defaultdict(Counter)
    for outcome in outcomes:
        spec = outcome.spec
        if spec["tail"] not in TAIL_COLUMNS:
            continue
        kind = classify(outcome, runtime_agrees, tail_free)
        if kind is None:
            continue
        if SiteSpec.from_dict(spec).plain_context:
            folds[row_key(spec)][TAIL_COLUMNS[spec["tail"]]][kind] += 1
        for field, plain in (("constant_shape", "channel"), ("conv_output_use", "single"),
                             ("params_via", "initializer")):
            if spec[field] != plain and (field != "constant_shape" or spec["tail"] != "bn"):
                contexts[f"{field}={spec[field]}"]["right" if kind in ("folded", "kept") else kind] += 1
    return {"folds": {row: {tail: dict(counts) for tail, counts in tails.items()}
                      for row, tails in sorted(folds.items())},
            "contexts": {name: dict(counts) for name, counts in sorted(contexts.items())}}


def cell(counts: dict | None) -> str:
    """``12 ok · 3 kept · 1 WRONG``: folded right, kept (computed right), wrong; ``right`` for a context, folded or
    not; ``fails without a tail``: the conversion fails whatever the tail; ``runtime``: onnxruntime's own."""
    if not counts:
        return "–"
    words = {"folded": "ok", "kept": "kept", "right": "right", "wrong": "WRONG", "other": "fails without a tail",
             "runtime": "runtime"}
    return " · ".join(f"{counts[c]} {words[c]}" for c in CLASSES if counts.get(c))


def markdown(table: dict) -> list[str]:
    lines = ["| op, rank, groups | " + " | ".join(TAIL_COLUMNS.values()) + " |",
             "|---|" + "---|" * len(TAIL_COLUMNS)]
    for row, tails in table["folds"].items():
        lines.append(f"| {row} | " + " | ".join(cell(tails.get(t)) for t in TAIL_COLUMNS.values()) + " |")
    lines += ["", "| context (not per-channel, or a fold must respect it) | configurations |", "|---|---|"]
    lines += [f"| {name} | {cell(counts)} |" for name, counts in table["contexts"].items()]
    return lines
