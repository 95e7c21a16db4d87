"""The shape of the package (docs/ARCHITECTURE.md): module size, import direction, no cycles, references that resolve."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "stitchcli"
MAX_LINES = 600


def modules() -> dict[str, Path]:
    """Give module name -> file of every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports_of(path: Path, name: str, *, top_level_only: bool) -> set[str]:
    """Give the stitchcli modules ``path`` imports (at module level only, or anywhere)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.If) and top_level_only:  # `if TYPE_CHECKING:` imports are for type checkers only
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("stitchcli")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.startswith("stitchcli"):
                found.add(base)
                found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def graph(*, top_level_only: bool) -> dict[str, set[str]]:
    known = modules()
    return {name: {m for m in imports_of(path, name, top_level_only=top_level_only) if m in known and m != name} for name, path in known.items()}


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """Give one import cycle (a list of modules, first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_module_is_longer_than_the_limit():
    long = {str(path.relative_to(ROOT)): n for path in modules().values() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_module_level_imports_have_no_cycle():
    assert cycle(graph(top_level_only=True)) is None


def test_the_demo_is_imported_only_by_its_command():
    importers = sorted(name for name, imported in graph(top_level_only=False).items() if "stitchcli.demo" in imported)
    assert importers == ["stitchcli.cli.demo"]


def test_the_library_below_the_command_line_never_imports_it():
    for name, imported in graph(top_level_only=False).items():
        if not name.startswith("stitchcli.cli") and name != "stitchcli.__main__":
            assert not any(m.startswith("stitchcli.cli") for m in imported), name


def test_every_method_reference_resolves_to_the_repository_docs():
    assert (ROOT / "docs/METHOD.md").is_file()
    for folder in ("stitchcli", "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            for match in re.finditer(r"(\S*)METHOD\.md", path.read_text()):
                assert match.group(1).endswith("docs/"), f"{path}: {match.group(0)}"


def test_the_command_line_starts_without_torch():
    code = "import sys, stitchcli.cli; print(sorted(m for m in ('torch', 'numpy', 'timm', 'transformers', 'datasets') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_every_name_a_lazy_package_exports_exists_in_its_module():
    lazy_packages = [name for name, path in modules().items() if path.name == "__init__.py" and "lazy_exports(" in path.read_text()]
    assert {"stitchcli.bridges", "stitchcli.relative", "stitchcli.similarity", "stitchcli.stitched"} <= set(lazy_packages)
    for name in lazy_packages:
        package = importlib.import_module(name)
        for exported in package.__all__:
            assert getattr(package, exported) is not None, f"{name}.{exported}"
        assert set(package.__all__) <= set(dir(package))
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        importlib.import_module("stitchcli.bridges").nonexistent  # noqa: B018


def test_every_module_compiles_without_a_warning():
    """An invalid escape in a docstring (``:func:`x`\\ s``) is a SyntaxWarning now and an error in a later Python."""
    import warnings

    for path in modules().values():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            compile(path.read_text(), str(path), "exec")
