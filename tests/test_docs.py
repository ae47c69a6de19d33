"""The documentation against the code: the README (the front page) and the Sphinx pages of
``docs/``.

- every row of a ``| function |`` table (README or docs pages) gives the exact signature of
  the function it names;
- the API reference (``docs/reference/index.rst``) lists every public name of ``csoftmax``,
  ``csoftmax.torch``, ``csoftmax.dask`` and ``csoftmax.slow`` (its pages are generated from
  the docstrings: a name missing there has no page);
- the ```python examples of the README and of the guide pages run, page by page in one
  namespace (those that import torch or dask where those are installed);
- the README's commands are those CI runs and its links and picture exist.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

import csoftmax

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# `name(args)` or `csoftmax.module.name(args)` in backticks
CALL = re.compile(r"`((?:csoftmax\.)?[A-Za-z_][\w.]*)\(([^`]*)\)`")
if not README.exists():  # e.g. tests/ copied alone to test a wheel
    pytest.skip("README.md is not beside tests/", allow_module_level=True)
OPTIONAL = {"csoftmax.torch": "torch", "csoftmax.dask": "dask"}
MODULES = ["csoftmax", "csoftmax.torch", "csoftmax.dask", "csoftmax.slow"]
#: The pages whose ```python blocks run (each page's blocks in order, in one namespace).
EXAMPLE_PAGES = ["README.md", "docs/index.md", "docs/getting-started.md",
                 "docs/guide/threads.md", "docs/guide/torch.md", "docs/guide/dask.md",
                 "docs/guide/additions.md"]
needs_docs = pytest.mark.skipif(not DOCS.is_dir(), reason="docs/ is not beside tests/")


def read(path):
    return Path(path).read_text(encoding="utf-8")


def pages():
    """The README and every Markdown page of the docs."""
    return [README, *sorted(DOCS.rglob("*.md"))] if DOCS.is_dir() else [README]


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
    """{(page, qualified name): argument list as written} from the function tables."""
    found = {}
    for page in pages():
        for cell in table_rows(read(page)):
            for name, args in CALL.findall(cell):
                qualified = name if name.startswith("csoftmax.") else f"csoftmax.{name}"
                key = (str(page.relative_to(ROOT)), qualified)
                assert key not in found, f"{qualified} is listed twice in {key[0]}"
                found[key] = args
    return found


def resolve(qualified):
    module, _, attr = qualified.rpartition(".")
    if module in OPTIONAL:
        pytest.importorskip(OPTIONAL[module])
    return getattr(importlib.import_module(module), attr)


def arguments(params):
    """The ast of a parameter list, so that quoting and spacing do not matter."""
    return ast.dump(ast.parse(f"def f({params}): pass").body[0].args)


def import_module(name):
    if name in OPTIONAL:
        pytest.importorskip(OPTIONAL[name])
    return importlib.import_module(name)


@needs_docs
def test_tables_are_found():
    names = {name for _, name in documented()}
    assert {"csoftmax.torch.cross_entropy", "csoftmax.dask.cross_entropy",
            "csoftmax.dask.cross_entropy_with_grad"} <= names


@pytest.mark.parametrize("key", sorted(documented()), ids=lambda k: f"{k[0]}:{k[1]}")
def test_signature_as_documented(key):
    page, qualified = key
    params = documented()[key]
    sig = inspect.signature(resolve(qualified))
    sig = sig.replace(parameters=[p.replace(annotation=p.empty) for p in sig.parameters.values()],
                      return_annotation=sig.empty)  # the tables show no annotations
    actual = str(sig)[1:-1]
    assert arguments(params) == arguments(actual), (
        f"{page} lists {qualified}({params}); the code has {qualified}({actual})")


def reference_entries():
    """{module: names} of the autosummary lists of docs/reference/index.rst."""
    entries, module, in_list = {}, None, False
    for line in read(DOCS / "reference" / "index.rst").splitlines():
        if m := re.match(r"^\.\. currentmodule:: (\S+)", line):
            module = m.group(1)
        elif line.startswith(".. autosummary::"):
            in_list = True
        elif in_list and re.match(r"^   [A-Za-z_]\w*$", line):
            entries.setdefault(module, []).append(line.strip())
        elif in_list and line and not line.startswith(" "):
            in_list = False
    return entries


@needs_docs
@pytest.mark.parametrize("name", MODULES)
def test_reference_lists_every_public_name(name):
    module = import_module(name)
    public = {n for n in module.__all__ if callable(getattr(module, n))}
    listed = reference_entries().get(name, [])
    assert sorted(public - set(listed)) == [], (
        f"public names of {name} missing from docs/reference/index.rst")
    assert sorted(set(listed) - public) == [], f"docs/reference/index.rst lists non-{name} names"
    assert len(listed) == len(set(listed))


@needs_docs
def test_reference_functions_have_examples():
    """Every function of the reference has a runnable example in its docstring."""
    for module_name, names in reference_entries().items():
        module = import_module(module_name)
        for name in names:
            obj = getattr(module, name)
            if inspect.isclass(obj):
                continue
            assert ">>> " in (obj.__doc__ or ""), f"{module_name}.{name} has no example"


def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", read(path), re.S)


@pytest.mark.parametrize("page", EXAMPLE_PAGES)
def test_examples_run(page):
    path = ROOT / page
    if not path.exists():
        pytest.skip(f"{page} is not beside tests/")
    blocks = python_blocks(path)
    assert blocks, f"{page} has no python example"
    for needs in ("torch", "dask", "threadpoolctl", "ml_dtypes"):  # optional: where installed
        if any(re.search(rf"^\s*(from|import) ({needs}|csoftmax\.{needs})\b", b, re.M)
               for b in blocks):
            pytest.importorskip(needs)
    namespace = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{page} (python block {i + 1})", "exec"), namespace)


def commands(text):
    """The first line of each ```bash block."""
    return [b.strip().splitlines()[0] for b in re.findall(r"```bash\n(.*?)```", text, re.S)]


def test_readme_commands_are_what_ci_runs():
    if not (ROOT / ".ci" / "run").exists():
        pytest.skip(".ci/run is not beside tests/")
    first, second = commands(read(README))[:2]
    assert first == 'pip install -e ".[bench]" && python -m bench --quick'
    assert second in read(ROOT / ".ci" / "run").splitlines()
    assert '"matplotlib"' in read(ROOT / "pyproject.toml")  # the first command's plot


@needs_docs
def test_readme_links_exist():
    text = read(README)
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert "docs/_static/perf/headline.png" in local
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README links to missing files: {missing}"
    assert len(text.splitlines()) <= 200, "the README is a front page: long material goes to docs/"


def test_changelog_names_this_version():
    path = ROOT / "CHANGELOG.md"
    if not path.exists():
        pytest.skip("CHANGELOG.md is not beside tests/")
    assert f"## {csoftmax.__version__}" in read(path)
