"""The worked examples in docstrings are run, so that they stay true."""
import doctest
import importlib
import pkgutil

import pytest

PACKAGES = ("ref_numpy", "torch_bridge", "equivalence", "gpu_cupy")


def _modules_with_examples():
    names = []
    for pkg in PACKAGES:
        for m in pkgutil.walk_packages(importlib.import_module(pkg).__path__, prefix=f"{pkg}."):
            if m.name.endswith("__main__"):
                continue
            tests = doctest.DocTestFinder().find(importlib.import_module(m.name))
            if any(t.examples for t in tests):
                names.append(m.name)
    return sorted(names)


MODULES = _modules_with_examples()


def test_there_are_examples_to_run():
    assert len(MODULES) >= 5, MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
