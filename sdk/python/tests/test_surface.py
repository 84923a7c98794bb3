"""The asyncio client has exactly the blocking client's surface, and the README's code
examples are valid Python using only names the SDK has."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import tuna
import tuna.aio
from tuna import resources
from tuna.aio import resources as aio_resources

PAIRS = [
    (resources.Files, aio_resources.AsyncFiles),
    (resources.Models, aio_resources.AsyncModels),
    (resources.Jobs, aio_resources.AsyncJobs),
    (resources.Artifacts, aio_resources.AsyncArtifacts),
    (resources.Sweeps, aio_resources.AsyncSweeps),
    (tuna.Job, tuna.AsyncJob),
    (tuna.Client, tuna.aio.AsyncClient),
]


def public_methods(cls: type) -> dict[str, list[str]]:
    return {
        name: list(inspect.signature(member).parameters)
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }


@pytest.mark.parametrize("sync, aio", PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_async_surface_matches_sync(sync: type, aio: type) -> None:
    assert public_methods(sync) == public_methods(aio)
    assert public_methods(sync), "nothing compared"


def test_async_methods_are_coroutines_or_async_iterators() -> None:
    for _, aio in PAIRS[:-1]:
        for name, member in inspect.getmembers(aio, inspect.isfunction):
            if name.startswith("_"):
                continue
            returns = str(inspect.signature(member).return_annotation)
            assert (
                inspect.iscoroutinefunction(member)
                or inspect.isasyncgenfunction(member)
                or "AsyncIterator" in returns
            ), f"{aio.__name__}.{name} is neither a coroutine nor an async iterator"


def test_readme_examples_are_valid_and_use_real_names() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert len(blocks) >= 4
    for block in blocks:
        tree = ast.parse(block)
        for node in ast.walk(tree):
            # tuna.X and tuna.aio.X must exist.
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if node.value.id == "tuna":
                    assert hasattr(tuna, node.attr), f"tuna.{node.attr} in README"
    services = re.findall(r"`client\.(\w+)`\s+\(`([\w/\n]+)`\)", readme)
    assert {name for name, _ in services} == {"files", "models", "jobs", "artifacts", "sweeps"}
    client = tuna.Client("127.0.0.1:1")
    try:
        for name, methods in services:
            for method in methods.replace("\n", "").split("/"):
                assert callable(getattr(getattr(client, name), method)), f"{name}.{method}"
    finally:
        client.close()
