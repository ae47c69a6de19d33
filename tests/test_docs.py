"""The README against the code: every row of its function tables gives the exact signature of
the function it names, every public function is in a table, and the examples of the sections
on the optional integrations run."""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import re

import pytest

import csoftmax

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
# `name(args)` or `csoftmax.module.name(args)` in backticks
CALL = re.compile(r"`((?:csoftmax\.)?[A-Za-z_][\w.]*)\(([^`]*)\)`")
if not os.path.exists(README):  # e.g. tests/ copied alone to test a wheel
    pytest.skip("README.md is not beside tests/", allow_module_level=True)
OPTIONAL = {"csoftmax.torch": "torch", "csoftmax.dask": "dask"}


def readme():
    with open(README, encoding="utf-8") as f:
        return f.read()


def table_rows(text):
    """First cells of the rows of every ``| function | ... |`` table."""
    rows, in_table = [], False
    for line in text.splitlines():
        if re.match(r"^\|\s*function\s*\|", line):
            in_table = True
            continue
        if in_table and line.startswith("|"):
            if not re.match(r"^\|\s*-+", line):
                rows.append(line.split("|")[1])
        else:
            in_table = False
    return rows


def documented():
    """{qualified name: argument list as written} from the README's function tables."""
    found = {}
    for cell in table_rows(readme()):
        for name, args in CALL.findall(cell):
            qualified = name if name.startswith("csoftmax.") else f"csoftmax.{name}"
            assert qualified not in found, f"{qualified} is listed twice"
            found[qualified] = args
    return found


def resolve(qualified):
    module, _, attr = qualified.rpartition(".")
    if module in OPTIONAL:
        pytest.importorskip(OPTIONAL[module])
    return getattr(importlib.import_module(module), attr)


def arguments(params):
    """The ast of a parameter list, so that quoting and spacing do not matter."""
    return ast.dump(ast.parse(f"def f({params}): pass").body[0].args)


def public_functions(module):
    return sorted(f"{module.__name__}.{n}" for n in module.__all__
                  if callable(getattr(module, n)) and not inspect.isclass(getattr(module, n)))


def test_tables_are_found():
    names = documented()
    assert "csoftmax.softmax" in names and "csoftmax.cross_entropy_with_grad" in names
    assert "csoftmax.torch.cross_entropy" in names and "csoftmax.dask.cross_entropy" in names


@pytest.mark.parametrize("qualified", sorted(documented()))
def test_signature_as_documented(qualified):
    params = documented()[qualified]
    sig = inspect.signature(resolve(qualified))
    sig = sig.replace(parameters=[p.replace(annotation=p.empty) for p in sig.parameters.values()],
                      return_annotation=sig.empty)  # the README shows no annotations
    actual = str(sig)[1:-1]
    assert arguments(params) == arguments(actual), (
        f"README lists {qualified}({params}); the code has {qualified}({actual})")


@pytest.mark.parametrize("module", ["csoftmax", "csoftmax.torch", "csoftmax.dask"])
def test_every_public_function_is_documented(module):
    if module in OPTIONAL:
        pytest.importorskip(OPTIONAL[module])
    mod = importlib.import_module(module)
    missing = sorted(set(public_functions(mod)) - set(documented()))
    assert not missing, f"not in the README's function tables: {missing}"


def section_code(title):
    """The ```python blocks of the README section ``## title``."""
    text = readme()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end if end >= 0 else None], re.S)


@pytest.mark.parametrize(("title", "needs"), [("PyTorch autograd", "torch"), ("Dask", "dask")])
def test_section_examples_run(title, needs):
    pytest.importorskip(needs)
    blocks = section_code(title)
    assert blocks
    for code in blocks:
        exec(compile(code, f"README.md ({title})", "exec"), {})


def test_changelog_names_this_version():
    path = os.path.join(os.path.dirname(README), "CHANGELOG.md")
    if not os.path.exists(path):
        pytest.skip("CHANGELOG.md is not beside tests/")
    with open(path, encoding="utf-8") as f:
        assert f"## {csoftmax.__version__}" in f.read()
