"""The README's Architecture table is the truth about the code: every module is in it, and each
module imports only modules listed above it (so there is no import cycle)."""

import ast
import re

from tests.helpers import REPO


def architecture_order() -> list[str]:
    """Module names in the order of the README's Architecture table."""
    section = REPO.joinpath("README.md").read_text().split("## Architecture", 1)[1].split("\n## ", 1)[0]
    paths = re.findall(r"^\| `(ppnet/[\w/]+\.py)` \|", section, flags=re.M)
    return [path.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for path in paths]


def ppnet_imports(path) -> set[str]:
    """The ppnet modules a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "ppnet"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ppnet":
            submodules = {f"{node.module}.{alias.name}" for alias in node.names}
            found |= {name for name in submodules if module_path(name).exists()} or {node.module}
    return found


def module_path(module: str):
    path = REPO.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def test_every_module_is_in_the_table():
    listed = set(architecture_order())
    modules = {
        ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for path in REPO.joinpath("ppnet").rglob("*.py")
    }
    packages_without_code = {"ppnet.data", "ppnet.datasets"}  # docstring-only __init__ files
    assert modules - packages_without_code == listed


def test_each_module_imports_only_modules_above_it():
    order = architecture_order()
    for position, module in enumerate(order):
        for imported in ppnet_imports(module_path(module)):
            assert imported in order[:position], f"{module} imports {imported}, which the README lists below it"
