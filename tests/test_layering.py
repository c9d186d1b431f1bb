"""extender/core stays pure: it imports no Kubernetes client, no server, no network and no outer layer.

Checked two ways: this test reads every import statement of the core (including relative imports that
climb out of it), and `make test` runs import-linter's contract from pyproject.toml, which also follows
indirect imports through third-party packages.
"""

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parent.parent / "extender" / "core"
FORBIDDEN = ("kubernetes", "aiohttp", "requests", "urllib3", "socket", "http", "urllib", "pynvml", "asyncio",
             "subprocess", "time", "datetime", "random", "extender.api", "extender.kube", "extender.agent",
             "simulator")


def imported_modules(source: str, module: str) -> set[str]:
    """Absolute names of everything a module imports (relative imports resolved against ``module``)."""
    names = set()
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


def violations(names: set[str]) -> list[str]:
    return sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in FORBIDDEN))


def core_modules():
    for path in sorted(CORE.rglob("*.py")):
        relative = path.relative_to(CORE.parent.parent).with_suffix("")
        yield ".".join(relative.parts).removesuffix(".__init__"), path


@pytest.mark.parametrize("module, path", list(core_modules()), ids=lambda v: str(v) if isinstance(v, str) else "")
def test_core_module_is_pure(module, path):
    assert violations(imported_modules(path.read_text(), module)) == []


def test_the_check_catches_what_it_should():
    source = "import aiohttp\nfrom kubernetes import client\nfrom ..api import app\nimport time\nimport numpy\n"
    found = violations(imported_modules(source, "extender.core.ledger"))
    assert found == ["aiohttp", "extender.api", "extender.api.app", "kubernetes", "kubernetes.client", "time"]


def test_there_are_core_modules_to_check():
    assert len(list(core_modules())) >= 15


MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def too_long(source: str) -> list[str]:
    """Functions (and methods) of a module longer than MAX_FUNCTION_LINES, and any ``__getattr__``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES or node.name == "__getattr__":
                found.append(f"{node.name} ({length} lines)")
    return found


@pytest.mark.parametrize("path", sorted(CORE.rglob("*.py")), ids=lambda p: str(p.relative_to(CORE)))
def test_core_modules_and_functions_stay_readable(path):
    """At most 400 lines a module and 60 a function; no hand-written laziness through __getattr__."""
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES
    assert too_long(source) == []


def test_the_length_check_catches_what_it_should():
    body = "\n".join(f"    x = {i}" for i in range(60))
    assert too_long(f"def long():\n{body}\n") == ["long (61 lines)"]
    assert too_long("class View:\n    def __getattr__(self, name):\n        return 1\n") == ["__getattr__ (2 lines)"]
