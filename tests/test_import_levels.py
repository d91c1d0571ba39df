"""Imports run one way: every arrow of ``dgn_plugins``' import graph points down the levels.

The graph is read from the source (every ``import`` / ``from`` statement, those inside
functions included), so an import hidden in a function body to dodge a cycle still counts.
The levels are the README's "Layout", bottom first.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dgn_plugins"

#: (module prefix, level): the longest matching prefix wins. Same level: allowed.
LEVELS = [
    ("dgn_plugins.errors", 0),
    ("dgn_plugins.cli", 0),
    ("dgn_plugins.atomic", 0),
    ("dgn_plugins.compat", 0),
    ("dgn_plugins._version", 0),
    ("dgn_plugins.functional", 0),
    ("dgn_plugins.ops", 0),
    ("dgn_plugins.kernels", 0),
    ("dgn_plugins.grouping", 0),
    ("dgn_plugins._C", 0),
    ("dgn_plugins._kmeans", 0),
    ("dgn_plugins.regrouping", 1),
    ("dgn_plugins.layer", 2),
    ("dgn_plugins.token_layer", 2),
    ("dgn_plugins.feasibility", 2),
    ("dgn_plugins.conversion", 3),
    ("dgn_plugins.training", 3),
    ("dgn_plugins", 4),  # the package's own __init__: the public names of the core
    ("dgn_plugins.data", 5),
    ("dgn_plugins.augmix", 5),
    ("dgn_plugins.openmmlab", 6),
    ("dgn_plugins.detectron2", 6),
    ("dgn_plugins.evaluation", 7),
    ("dgn_plugins.launch", 8),
]
#: Adapters share a level but never import each other.
ADAPTERS = ("dgn_plugins.openmmlab", "dgn_plugins.detectron2")


def level_of(module: str):
    matches = [(prefix, level) for prefix, level in LEVELS if module == prefix or module.startswith(prefix + ".")]
    if not matches:
        return None
    return max(matches, key=lambda m: len(m[0]))


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path = PACKAGE):
    """``(line, module)`` of every dgn_plugins module this file imports (names resolved to modules), once each."""
    return sorted(set(_imports(path, root)))


def _imports(path: Path, root: Path):
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "dgn_plugins":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "dgn_plugins":
                continue
            for alias in node.names:  # ``from pkg import submodule`` imports the submodule
                candidate = f"{target}.{alias.name}"
                sub = root.parent / Path(*candidate.split("."))
                compiled = candidate in ("dgn_plugins._C", "dgn_plugins._kmeans")  # extensions: no .py file
                if compiled or sub.with_suffix(".py").is_file() or (sub / "__init__.py").is_file():
                    yield node.lineno, candidate
                else:
                    yield node.lineno, target


def upward_imports(root: Path = PACKAGE):
    """Every import that points up a level, or from one adapter into the other, as readable lines."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        source = module_name(path, root)
        source_prefix, source_level = level_of(source)
        for line, target in imported_modules(path, root):
            found = level_of(target)
            if found is None:
                problems.append(f"{path.relative_to(root.parent)}:{line}: {target} has no level")
                continue
            target_prefix, target_level = found
            if target_level > source_level:
                problems.append(f"{path.relative_to(root.parent)}:{line}: {source} (level {source_level}) imports "
                                f"{target} (level {target_level})")
            elif source_prefix in ADAPTERS and target_prefix in ADAPTERS and source_prefix != target_prefix:
                problems.append(f"{path.relative_to(root.parent)}:{line}: adapter {source} imports {target}")
    return problems


def test_every_module_has_a_level():
    unplaced = [module_name(p) for p in PACKAGE.rglob("*.py") if level_of(module_name(p)) is None]
    assert not unplaced


def _exists(module: str, root: Path = PACKAGE) -> bool:
    if module in ("dgn_plugins._C", "dgn_plugins._kmeans"):
        return True
    path = root.parent / Path(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_every_imported_module_exists():
    """A module moved without updating an import (a function-level one runs late) fails here, not in a user's run."""
    missing = [f"{path.relative_to(PACKAGE.parent)}:{line}: {target}"
               for path in sorted(PACKAGE.rglob("*.py")) for line, target in imported_modules(path)
               if not _exists(target)]
    assert not missing, "\n".join(missing)


def test_no_import_points_up_a_level():
    problems = upward_imports()
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("source, statement", [
    ("layer.py", "from .training.model import regroup_model"),  # the layer reaching up to the training level
    ("openmmlab/hook.py", "from ..evaluation.plots import plot_timelines"),  # an adapter into experiment tooling
    ("openmmlab/switch.py", "from dgn_plugins.detectron2 import norm"),  # one adapter into the other
    ("regrouping/rule.py", "    from ..layer import DynamicGroupNorm"),  # inside a function body too
])
def test_the_check_finds_an_arrow_back_up(tmp_path, source, statement):
    import shutil

    copy = tmp_path / "dgn_plugins"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    path = copy / source
    text = path.read_text(encoding="utf-8")
    if statement.startswith(" "):
        text += f"\n\ndef _probe():\n{statement}\n"
    else:
        text += f"\n{statement}\n"
    path.write_text(text, encoding="utf-8")
    problems = upward_imports(copy)
    assert len(problems) == 1 and source.replace("/", ".").removesuffix(".py") in problems[0], problems
