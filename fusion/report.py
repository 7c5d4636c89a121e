"""Render check reports: a table for people, JSON for machines."""

from __future__ import annotations

import json

import numpy as np
from rich.console import Console
from rich.table import Table

from fusion.check import ModelReport


def _number(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def to_json(reports: list[ModelReport], *, version: str) -> str:
    document = {"fusion": version, "passed": all(r.passed for r in reports),
                "engine": reports[0].engine if reports else None,
                "sites": sum(len(r.sites) for r in reports),
                "failed_sites": sum(not s.passed for r in reports for s in r.sites),
                "models": [r.to_dict() for r in reports]}
    return json.dumps(_finite(document), indent=2, default=_number) + "\n"


def _finite(value):
    """JSON has no NaN or Infinity: write them as strings."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


def table(reports: list[ModelReport]) -> Table:
    grid = Table(title=f"fusion check against {reports[0].engine}" if reports else "fusion check",
                 show_lines=True, expand=True)
    for column, style in (("model", "cyan"), ("site", ""), ("verdict", ""), ("output", ""), ("why / notes", "")):
        grid.add_column(column, style=style, overflow="fold")
    for report in reports:
        for site in report.sites:
            verdict = "[green]PASS[/green]" if site.passed else "[bold red]FAIL[/bold red]"
            output = site.output.summary() if site.output else "-"
            if site.params is not None:
                params = "params ok" if site.params.passed else "params WRONG"
                output += f"\n{params}"
            why = "\n".join([f"[red]{e}[/red]" for e in site.explanations] + [f"[dim]{n}[/dim]" for n in site.notes])
            grid.add_row(report.model, f"{site.description}\n[dim]{site.label}[/dim]", verdict, output, why)
    return grid


def print_reports(reports: list[ModelReport], console: Console | None = None) -> None:
    console = console or Console()
    sites = [s for r in reports for s in r.sites]
    if not sites:
        console.print("no Conv or ConvTranspose found: nothing to judge")
        return
    console.print(table(reports))
    failed = [s for s in sites if not s.passed]
    console.print(f"{len(sites) - len(failed)} passed, {len(failed)} failed of {len(sites)} sites "
                  f"in {len(reports)} model(s)")
