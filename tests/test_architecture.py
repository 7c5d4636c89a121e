"""Layers import only from below: math, kernels, the oracle, graph, engines, jobs, surface (see README, "Layout").

``graph`` and ``engines`` are layers of their own: the adapters use the site finder, never the reverse."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "fusion"
LAYERS = {
    1: {"errors", "attrs", "affine", "reference", "fold", "known_wrong_folds", "compare", "diagnose", "files",
        "deadline"},
    2: {"kernels", "ops", "bounds", "winograd"},
    3: {"oracle"},
    4: {"graph"},
    5: {"engines"},
    6: {"check", "sweep", "bench", "report", "testing"},
    7: {"cli", "__init__", "__main__"},
}


def layer_of(module: str) -> int:
    top = module.split(".")[0]
    return next(level for level, names in LAYERS.items() if top in names)


def test_every_module_has_a_layer_and_imports_only_from_below_or_beside():
    offences = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).with_suffix("")
        if relative.parts[:2] == ("engines", "children"):
            continue  # child scripts never import fusion at all (checked below)
        own = layer_of(".".join(relative.parts))
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module == "fusion":  # from fusion import ops, fold
                names = [f"fusion.{a.name}" for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fusion."):
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("fusion")]
            for name in names:
                target = name.split(".", 1)[1] if "." in name else "__init__"
                if layer_of(target) > own:
                    offences.append(f"{relative} (layer {own}) imports {name} (layer {layer_of(target)})")
    assert not offences, offences


def test_child_scripts_do_not_import_the_package():
    for path in (PACKAGE / "engines" / "children").glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        imported += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        assert not any(name.startswith("fusion") for name in imported), path
