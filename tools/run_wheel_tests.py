"""Run the test suite against an *installed* csoftmax (a wheel), never the source tree.

Used by ``tools/check_wheel.sh`` and by cibuildwheel's ``test-command`` (see
``[tool.cibuildwheel]`` in pyproject.toml); standard library only, and it runs on
Linux, macOS and Windows.

    python tools/run_wheel_tests.py [--source DIR] [--oldest-numpy] [--no-openmp]
                                    [-- PYTEST ARGS...]

It copies ``tests/`` (with ``bench/``, ``pyproject.toml``, ``README.md`` and ``CHANGELOG.md``,
which some tests and pytest's settings need, but never ``csoftmax/``) from ``--source``
(default: the current directory) into a fresh temporary directory; checks, in a separate
interpreter started there, that ``import csoftmax`` resolves to site-packages with the
compiled kernels and OpenMP, that ``csoftmax.__version__`` is the installed distribution's
version and that the typing files are installed; and then runs pytest there.

``--oldest-numpy`` first installs the oldest NumPy the package claims to support that has a
wheel for this Python (the ``numpy>=`` floor of the installed metadata, raised to the first
NumPy release with wheels for this Python) and reports which one ran.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

#: The first NumPy release with wheels for each CPython (what "the oldest NumPy" can mean
#: there).  A Python missing here has its oldest run skipped with a message.
FIRST_NUMPY_FOR_PYTHON = {
    (3, 9): "1.19.3",
    (3, 10): "1.21.2",
    (3, 11): "1.23.2",
    (3, 12): "1.26.0",
    (3, 13): "2.1.0",
    (3, 14): "2.3.2",
}

#: What is copied next to the tests (when present): the bench package for the bench smoke
#: test, pyproject.toml for pytest's settings, the README and changelog that test_docs reads.
COPIED = ("tests", "bench", "pyproject.toml", "README.md", "CHANGELOG.md")

CHECK = r"""
import importlib.metadata as md, os, sys, sysconfig
import csoftmax
from csoftmax import _dispatch

expect_openmp = sys.argv[1] == "1"
pkg = os.path.dirname(os.path.realpath(csoftmax.__file__))
roots = {os.path.realpath(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")}
cwd = os.path.realpath(os.getcwd())
print(f"csoftmax {csoftmax.__version__} from {pkg}")
assert os.path.dirname(pkg) in roots, f"csoftmax imported from {pkg}, not from {sorted(roots)}"
assert not pkg.startswith(cwd + os.sep), f"csoftmax imported from the test directory: {pkg}"
dist = md.version("csoftmax")
assert csoftmax.__version__ == dist, f"__version__ {csoftmax.__version__} != metadata {dist}"
assert csoftmax.BACKEND == "cython", (csoftmax.BACKEND, _dispatch.FALLBACK_REASON)
cfg = csoftmax.config()
kernels = os.path.realpath(_dispatch.KERNELS.__file__)
assert kernels.startswith(pkg + os.sep), kernels
if expect_openmp:
    assert cfg["openmp"] is True, f"config()['openmp'] is {cfg['openmp']!r}"
for name in ("py.typed", "__init__.pyi"):
    assert os.path.isfile(os.path.join(pkg, name)), f"{name} is not installed"
csoftmax.show_config()
"""


def _version_tuple(v):
    return tuple(int(p) for p in re.findall(r"\d+", v)[:3])


def numpy_floor():
    """(version, why) of the oldest NumPy to test on this Python, or (None, why)."""
    import importlib.metadata as md

    claimed = None
    for req in md.requires("csoftmax") or []:
        m = re.match(r"^\s*numpy\s*(?:\(\s*)?>=\s*([0-9][0-9.]*)", req)
        if m and "extra ==" not in req:
            claimed = m.group(1)
    first = FIRST_NUMPY_FOR_PYTHON.get(sys.version_info[:2])
    if claimed is None:
        return None, "the installed metadata has no numpy>= requirement"
    if first is None:
        return None, f"no known first NumPy release for Python {sys.version.split()[0]}"
    if _version_tuple(claimed) >= _version_tuple(first):
        return claimed, f"numpy>={claimed} (the package's floor)"
    return first, (f"numpy {first} (the first with wheels for this Python; "
                   f"the package claims >={claimed})")


def run(cmd, **kwargs):
    shown = ["<script>" if "\n" in c else c for c in cmd]
    print("+ " + " ".join(shown), flush=True)
    return subprocess.run(cmd, check=False, **kwargs).returncode


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=os.getcwd(),
                        help="directory holding tests/ (and bench/, pyproject.toml)")
    parser.add_argument("--oldest-numpy", action="store_true",
                        help="install the oldest supported NumPy for this Python first")
    parser.add_argument("--no-openmp", action="store_true",
                        help="do not require config()['openmp'] (a build without OpenMP)")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args(argv)

    env = dict(os.environ)
    for var in ("PYTHONPATH", "PYTHONHOME", "CSOFTMAX_BACKEND", "CSOFTMAX_CPU"):
        env.pop(var, None)

    if args.oldest_numpy:
        version, why = numpy_floor()
        if version is None:
            print(f"run_wheel_tests: oldest-NumPy run skipped: {why}")
            return 0
        print(f"run_wheel_tests: testing with the oldest NumPy: {why}", flush=True)
        rc = run([sys.executable, "-m", "pip", "install", "--only-binary=numpy",
                  f"numpy=={version}"], env=env)
        if rc:
            return rc

    source = os.path.abspath(args.source)
    if not os.path.isdir(os.path.join(source, "tests")):
        parser.error(f"no tests/ in {source}")
    with tempfile.TemporaryDirectory(prefix="csoftmax-wheel-tests-") as tmp:
        for name in COPIED:
            src = os.path.join(source, name)
            if os.path.isdir(src):
                shutil.copytree(src, os.path.join(tmp, name),
                                ignore=shutil.ignore_patterns("__pycache__", "*.py[cod]"))
            elif os.path.isfile(src):
                shutil.copy(src, tmp)
        # -I: no user site, no PYTHON* variables, the script's directory not on sys.path
        rc = run([sys.executable, "-I", "-c", CHECK, "0" if args.no_openmp else "1"],
                 cwd=tmp, env=env)
        if rc:
            print("run_wheel_tests: the installed package failed its checks", file=sys.stderr)
            return rc
        return run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests",
                    *args.pytest_args], cwd=tmp, env=env)


if __name__ == "__main__":
    sys.exit(main())
