"""Render check reports: plain lines for terminals and logs, JSON for machines.

One finding a line, names whole, never wrapped or cut (a log grepped for a node name finds it); the verdict on the
whole model and the culprit first; each explanation once.
"""

from __future__ import annotations

import json

import numpy as np
from rich.console import Console

from fusion.check import ModelReport

STYLE = {"PASS": "green", "FAIL": "bold red", "DOWNSTREAM": "yellow", "NOT EXPOSED": "dim"}


def _number(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _finite(value):
    """JSON has no NaN or Infinity: write them as strings."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        return str(float(value))
    return value


def to_json(reports: list[ModelReport], *, version: str) -> str:
    document = {"fusion": version, "passed": all(r.passed for r in reports),
                "engine": reports[0].engine if reports else None,
                "sites": sum(len(r.sites) for r in reports),
                "failed_sites": sum(s.status == "fail" for r in reports for s in r.sites),
                "models": [r.to_dict() for r in reports]}
    return json.dumps(_finite(document), indent=2, default=_number) + "\n"


def lines(report: ModelReport) -> list[tuple[str, str | None]]:
    """``(text, style)`` for every line of one model's report."""
    out: list[tuple[str, str | None]] = []
    verdict = "PASS" if report.passed else "FAIL"
    shapes = ", ".join(f"{name}{list(shape)}" for name, shape in report.input_shapes.items())
    mode = "each site converted alone" if report.mode == "sites" else "whole model converted once"
    out.append((f"{verdict} {report.model} against {report.engine} ({mode}; inputs {shapes}; "
                f"{report.seconds:.1f} s)", STYLE[verdict]))
    for text in report.explanations:
        out.append((f"  FAIL {text}", STYLE["FAIL"]))
    if report.whole_model is not None:
        for output in report.whole_model.outputs:
            state = "PASS" if output.passed else "FAIL"
            out.append((f"  {state} output {output.name}: {output.summary()}", STYLE[state]))
    culprit = report.first_wrong
    if culprit is not None:
        where = f"site {culprit.site}" if culprit.site is not None else "outside the fusion sites"
        out.append((f"  culprit: tensor {culprit.tensor!r} of node {culprit.node!r} ({where})", STYLE["FAIL"]))
        for text in culprit.explanations:
            out.append((f"    culprit: {text}", STYLE["FAIL"]))
    counts = {status: sum(s.status == status for s in report.sites)
              for status in ("pass", "fail", "downstream", "not_exposed")}
    out.append((f"  sites: {len(report.sites)} ({counts['pass']} pass, {counts['fail']} fail, {counts['downstream']} "
                f"downstream, {counts['not_exposed']} not exposed)", None))
    shown = set(culprit.explanations) if culprit is not None else set()
    for site in report.sites:
        state = site.status.upper().replace("_", " ")
        held = f"; within {site.held}" if site.held and site.held != "exact" else ""
        params = "" if site.params is None else ("; params ok" if site.params.passed else "; params WRONG")
        output = f"; {site.output.summary()}" if site.output is not None else ""
        out.append((f"  {state} site {site.index} {site.label} [{site.description}]{output}{params}{held}",
                    STYLE[state]))
        for text in site.explanations:
            if text not in shown:
                out.append((f"    site {site.index}: {text}", STYLE["FAIL"]))
                shown.add(text)
        for text in site.notes:
            if not text.startswith("output within the error of"):  # said by "within" on the site's line
                out.append((f"    site {site.index} note: {text}", "dim"))
    for text in dict.fromkeys(report.notes):
        out.append((f"  note: {text}", "dim"))
    return out


def print_reports(reports: list[ModelReport], console: Console | None = None) -> None:
    console = console or Console()
    for report in reports:
        for text, style in lines(report):
            console.print(text, style=style if console.is_terminal else None, soft_wrap=True, markup=False,
                          highlight=False)
    sites = [s for r in reports for s in r.sites]
    failed = [r for r in reports if not r.passed]
    console.print(f"{len(reports) - len(failed)} of {len(reports)} model(s) passed; sites: "
                  f"{sum(s.status == 'pass' for s in sites)} pass, {sum(s.status == 'fail' for s in sites)} fail, "
                  f"{sum(s.status == 'downstream' for s in sites)} downstream, "
                  f"{sum(s.status == 'not_exposed' for s in sites)} not exposed", soft_wrap=True, markup=False,
                  highlight=False)
