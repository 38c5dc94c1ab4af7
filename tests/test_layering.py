"""The dependency rule of the package, checked from the imports of every module (AST scan).

    datasets <- encoders <- protocol <- {leaderboard, sweep}
    baselines may use datasets and encoders (never protocol)
    analysis may use all of these; only analysis/alignment.py may import cxrbench.baselines
    cli uses everything; nothing else imports cli; typer/rich/click appear only in cli
    leaf modules (errors, io_utils, output_dirs, provenance, runtime, representation, workers) may be used by anyone and
    use only each other

Every import counts: module level, inside functions (lazy imports) and under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "cxrbench"

LEAVES = frozenset(
    {"errors", "io_utils", "output_dirs", "provenance", "runtime", "representation", "workers"}
)
_PROTOCOL_AND_BELOW = frozenset({"datasets", "encoders", "protocol"})
_LIBRARIES = _PROTOCOL_AND_BELOW | {"leaderboard", "sweep", "baselines", "analysis"}
# Each unit of cxrbench (a sub-package or a top-level module) -> the other units it may import, leaves
# aside. A unit missing here is a violation too: a new package must be placed in the rule.
MAY_IMPORT: dict[str, frozenset[str]] = {
    "datasets": frozenset(),
    "encoders": frozenset({"datasets"}),
    "protocol": frozenset({"datasets", "encoders"}),
    "leaderboard": _PROTOCOL_AND_BELOW,
    "sweep": _PROTOCOL_AND_BELOW,
    "baselines": frozenset({"datasets", "encoders"}),
    "analysis": _LIBRARIES - {"analysis"},
    "demo": _LIBRARIES,  # the demo pipeline: a library that drives the others, used by cli/demo.py
    "study": _LIBRARIES | {"demo"},  # `cxrbench study`: drives the demo's pieces on prepared data
    "cli": _LIBRARIES | {"demo", "study"},
    "__main__": frozenset({"cli"}),
    "__init__": frozenset(),
    **{leaf: frozenset() for leaf in LEAVES},
}
# Only this module of its unit may import that unit (image-report alignment needs the report half).
ONLY_FROM = {("analysis", "baselines"): "cxrbench/analysis/alignment.py"}
CLI_ONLY_LIBRARIES = frozenset({"typer", "rich", "click"})

# Violations of today's code that other branches of the layout work remove; the lead empties this list
# after merging them. Keyed by (file, imported module), not by line, so that edits elsewhere in the
# file keep the entry valid. An entry that no longer occurs fails the test, so the list cannot rot.
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Violation:
    path: str  # relative to the folder that holds the package
    line: int
    imported: str
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: imports {self.imported} ({self.rule})"


def _module_name(path: Path, root: Path) -> list[str]:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def imported_modules(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `path`, lazy and relative ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path, root)
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            if base == root.name:  # `from cxrbench import errors` imports the module cxrbench.errors
                found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, base))
    return found


def unit_of(module: str, root_name: str) -> str | None:
    """The unit (sub-package or top-level module) of cxrbench that `module` belongs to, else None."""
    parts = module.split(".")
    if parts[0] != root_name:
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def check_layering(root: Path = PACKAGE_ROOT) -> list[Violation]:
    """Every import of every module under `root` that breaks the dependency rule."""
    violations = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).as_posix()
        parts = path.relative_to(root).with_suffix("").parts
        unit = parts[0]
        if unit not in MAY_IMPORT:
            violations.append(Violation(rel, 1, "-", f"{unit!r} is not placed in the dependency rule"))
            continue
        for line, module in imported_modules(path, root):
            top = module.split(".")[0]
            if top in CLI_ONLY_LIBRARIES and unit != "cli":
                violations.append(Violation(rel, line, module, f"{top} is imported only in cxrbench/cli/"))
                continue
            target = unit_of(module, root.name)
            if target is None or target in (unit, "__init__") or target in LEAVES:
                continue
            if unit in LEAVES:
                violations.append(Violation(rel, line, module, "leaf modules import only leaf modules"))
            elif target not in MAY_IMPORT[unit]:
                allowed = ", ".join(sorted(MAY_IMPORT[unit] | LEAVES))
                violations.append(Violation(rel, line, module, f"{unit} may import only {allowed}"))
            elif (unit, target) in ONLY_FROM and rel != ONLY_FROM[(unit, target)]:
                only = ONLY_FROM[(unit, target)]
                violations.append(Violation(rel, line, module, f"only {only} may import cxrbench.{target}"))
    return violations


# ------------------------------------------------------------------------------------------- tests
def test_package_follows_the_dependency_rule() -> None:
    violations = check_layering()
    new = [v for v in violations if (v.path, v.imported) not in KNOWN_VIOLATIONS]
    assert not new, "dependency rule broken:\n" + "\n".join(map(str, new))
    stale = set(KNOWN_VIOLATIONS) - {(v.path, v.imported) for v in violations}
    assert not stale, f"KNOWN_VIOLATIONS entries no longer occur; remove them: {sorted(stale)}"


def _write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_check_reports_each_kind_of_violation(tmp_path) -> None:
    root = tmp_path / "cxrbench"
    _write(root, "__init__.py", "")
    _write(root, "errors.py", "import os\n")
    _write(root, "io_utils.py", "from cxrbench.errors import CxrbenchError\n")  # leaf -> leaf: fine
    _write(root, "representation.py", "from cxrbench.protocol import tasks\n")  # leaf -> package
    _write(root, "datasets/__init__.py", "from cxrbench import errors\nfrom .base import x\n")
    _write(root, "datasets/base.py", "import rich.console\n")
    _write(root, "encoders/__init__.py", "import cxrbench.datasets\n")
    _write(root, "protocol/__init__.py", "")
    _write(root, "protocol/run.py", "def lazy():\n    from cxrbench.leaderboard import aggregate\n")
    _write(root, "protocol/heads/__init__.py", "from ..tasks import TASKS\nfrom ...sweep import engine\n")
    _write(root, "baselines/data.py", "if True:\n    import cxrbench.protocol.runner\n")
    _write(root, "analysis/alignment.py", "from cxrbench.baselines import data\n")
    _write(root, "analysis/records.py", "from cxrbench.baselines.training import pretrain\n")
    _write(root, "cli/app.py", "import typer\nfrom cxrbench import analysis, demo\n")
    _write(root, "gadgets/x.py", "")
    found = {(v.path, v.line, v.imported): v.rule for v in check_layering(root)}
    assert found == {
        ("cxrbench/representation.py", 1, "cxrbench.protocol"): "leaf modules import only leaf modules",
        ("cxrbench/datasets/base.py", 1, "rich.console"): "rich is imported only in cxrbench/cli/",
        ("cxrbench/protocol/run.py", 2, "cxrbench.leaderboard"): (
            "protocol may import only datasets, encoders, errors, io_utils, output_dirs, provenance, representation, runtime, workers"
        ),
        ("cxrbench/protocol/heads/__init__.py", 2, "cxrbench.sweep"): (
            "protocol may import only datasets, encoders, errors, io_utils, output_dirs, provenance, representation, runtime, workers"
        ),
        ("cxrbench/baselines/data.py", 2, "cxrbench.protocol.runner"): (
            "baselines may import only datasets, encoders, errors, io_utils, output_dirs, provenance, representation, runtime, workers"
        ),
        ("cxrbench/analysis/records.py", 1, "cxrbench.baselines.training"): (
            "only cxrbench/analysis/alignment.py may import cxrbench.baselines"
        ),
        ("cxrbench/gadgets/x.py", 1, "-"): "'gadgets' is not placed in the dependency rule",
    }
    message = str(Violation("cxrbench/protocol/run.py", 2, "cxrbench.leaderboard", "rule"))
    assert message == "cxrbench/protocol/run.py:2: imports cxrbench.leaderboard (rule)"


def test_relative_imports_resolve_to_absolute_modules(tmp_path) -> None:
    root = tmp_path / "cxrbench"
    _write(root, "protocol/metrics/__init__.py", "from . import dice\nfrom .ragged import f\n")
    _write(root, "protocol/metrics/dice.py", "from ..tasks import T\nfrom ...datasets import open_prepared\n")
    assert imported_modules(root / "protocol/metrics/__init__.py", root) == [
        (1, "cxrbench.protocol.metrics"),
        (2, "cxrbench.protocol.metrics.ragged"),
    ]
    assert imported_modules(root / "protocol/metrics/dice.py", root) == [
        (1, "cxrbench.protocol.tasks"),
        (2, "cxrbench.datasets"),
    ]
