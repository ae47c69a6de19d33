"""Sphinx configuration of the csoftmax documentation.

Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html`` (what CI runs), from
the repository root, with the package importable (built in place or installed) and the
``docs`` extra installed.  The build needs no network: see ``intersphinx_mapping`` below.
"""

from __future__ import annotations

import os
import sys
import tempfile
import zlib
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
# the checkout's package (built in place) before any installed copy
sys.path.insert(0, str(ROOT))

import csoftmax  # noqa: E402

project = "csoftmax"
author = "the csoftmax developers"
copyright = "the csoftmax developers"  # noqa: A001 - Sphinx's name
release = csoftmax.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "numpydoc",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "_static/perf/*.md"]
templates_path = ["_templates"]

# -- API reference -------------------------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"members": False}
autodoc_typehints = "none"  # the signatures as written; types are in the numpydoc sections
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# -- Markdown pages (myst-parser) ----------------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# -- intersphinx, offline-safe -------------------------------------------------------------
# Each project lists two inventory locations: its web site first, then an empty inventory
# written here.  With network, links to NumPy, SciPy, PyTorch and Dask resolve; without it
# (an offline CI runner), Sphinx falls back to the empty inventory, logs the failed download
# at "info" level only (a warning is logged only when *every* location fails), and the
# references render as plain text: `-W` builds pass either way.  CSOFTMAX_DOCS_OFFLINE=1
# skips the download attempts altogether.
_EMPTY_INV = Path(tempfile.gettempdir()) / "csoftmax-docs-empty-objects.inv"
_EMPTY_INV.write_bytes(b"# Sphinx inventory version 2\n# Project: none\n# Version: 0\n"
                       b"# The remainder of this file is compressed using zlib.\n"
                       + zlib.compress(b""))
_OFFLINE = os.environ.get("CSOFTMAX_DOCS_OFFLINE", "") not in {"", "0"}
_INTERSPHINX = {
    "python": "https://docs.python.org/3",
    "numpy": "https://numpy.org/doc/stable",
    "scipy": "https://docs.scipy.org/doc/scipy",
    "torch": "https://docs.pytorch.org/docs/stable",
    "dask": "https://docs.dask.org/en/stable",
}
intersphinx_mapping = {
    name: (url, (str(_EMPTY_INV),) if _OFFLINE else (None, str(_EMPTY_INV)))
    for name, url in _INTERSPHINX.items()
}
intersphinx_timeout = 5
intersphinx_disabled_reftypes = ["std:doc"]

# -- HTML ----------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"csoftmax {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_show_sourcelink = False
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_context = {"default_mode": "light"}
