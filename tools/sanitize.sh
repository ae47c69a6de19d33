#!/usr/bin/env bash
# Run the test suite against instrumented builds of csoftmax (issue 6).
#
#   tools/sanitize.sh [asan|boundscheck|all] [pytest arguments...]
#
#   asan         AddressSanitizer + UndefinedBehaviorSanitizer build (CSOFTMAX_SANITIZE=
#                address,undefined: -fsanitize=... -g -O1), the suite run with gcc's libasan
#                preloaded into CPython.  Any out-of-bounds read or write, use after free or
#                stack overflow in the kernels aborts the run; every UB report fails it.
#   boundscheck  CSOFTMAX_BOUNDSCHECK=1: Cython bounds and wraparound checks on (also switched
#                on in the copy's .pyx header comments, which otherwise override it).
#   all          both (the default).
#
# Each build happens in a fresh copy of the working tree (tracked and untracked-but-not-ignored
# files, without built extensions or generated C++), never in the checkout itself, which other
# processes import.  Environment:
#   CSOFTMAX_SANITIZE_DIR   where the copies go (default: /tmp/csoftmax-sanitize)
#   CSOFTMAX_BASELINE_ONLY  =1 builds only the baseline ISA variant (faster); by default all
#                           three variants are built, the suite runs on the one dispatch picks,
#                           and tests/test_fuzz.py drives every variant the CPU runs.
#   CSOFTMAX_CPU            forces a variant for the run (baseline|avx2|avx512).
#   SANITIZE_PYTEST_ARGS    default pytest arguments (default: "-q -p no:cacheprovider").
#   SANITIZE_REUSE=1        rerun on an earlier build of the same mode (sources refreshed).
#
# Exit status: 0 when every requested run is clean.  Sanitizer reports are kept in
# $CSOFTMAX_SANITIZE_DIR/<mode>/logs.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BASE=${CSOFTMAX_SANITIZE_DIR:-/tmp/csoftmax-sanitize}
MODE=${1:-all}
[[ $# -gt 0 ]] && shift
PYTHON=${PYTHON:-python}
read -r -a DEFAULT_ARGS <<< "${SANITIZE_PYTEST_ARGS:--q -p no:cacheprovider}"
PYTEST_ARGS=("$@")
[[ ${#PYTEST_ARGS[@]} -eq 0 ]] && PYTEST_ARGS=("${DEFAULT_ARGS[@]}" tests)

copy_tree() {  # copy_tree DEST: the working tree's source files, no build products
    local dest=$1
    if [[ ${SANITIZE_REUSE:-0} == 1 && -n $(compgen -G "$dest/csoftmax/_kernels*.so") ]]; then
        echo "== SANITIZE_REUSE=1: refreshing the sources in $dest, keeping its build"
    else
        rm -rf "$dest"
    fi
    mkdir -p "$dest"
    (cd "$ROOT" && git ls-files -co --exclude-standard -z \
        | tar --null -T - --ignore-failed-read -cf - 2>/dev/null) | tar -xf - -C "$dest"
    [[ ${SANITIZE_REUSE:-0} == 1 ]] && return 0
    rm -f "$dest"/csoftmax/*.so "$dest"/src/*.cpp
    rm -rf "$dest/build"
}

build() {  # build DEST [ENV=VALUE...]: compile the extension in place, in the copy
    local dest=$1
    shift
    if [[ ${SANITIZE_REUSE:-0} == 1 && -n $(compgen -G "$dest/csoftmax/_kernels*.so") ]]; then
        return 0
    fi
    echo "== building in $dest with $*"
    (cd "$dest" && env "$@" "$PYTHON" setup.py -q build_ext --inplace -j "$(nproc)" \
        > "$dest/build.log" 2>&1) || { tail -40 "$dest/build.log"; return 1; }
    (cd "$dest" && "$PYTHON" -c 'import csoftmax; print("built:", csoftmax.config()["cpu_paths_available"])' 2>/dev/null) || true
}

run_asan() {
    local dest=$BASE/asan logs
    copy_tree "$dest"
    build "$dest" CSOFTMAX_SANITIZE=address,undefined
    logs=$dest/logs
    mkdir -p "$logs"
    local libasan libstdcxx
    libasan=$(gcc -print-file-name=libasan.so)
    [[ -e $libasan ]] || { echo "libasan not found ($libasan)"; return 1; }
    # libstdc++ too: ASan intercepts __cxa_throw only if libstdc++ is there when it starts,
    # else the first C++ exception thrown by any extension (matplotlib, torch) aborts
    libstdcxx=$(gcc -print-file-name=libstdc++.so.6)
    echo "== pytest under ASan+UBSan (LD_PRELOAD=$libasan $libstdcxx): ${PYTEST_ARGS[*]}"
    local status=0
    # detect_leaks=0: CPython keeps interned objects alive at exit, which LSan calls leaks.
    # ASan reports go to $logs/asan.PID.  UBSan (halt_on_error=0: every report, not just the
    # first) writes to the process's stderr whatever log_path says, which pytest would swallow,
    # hence --capture=no and the tee into $logs/pytest.log.
    (set +e; cd "$dest" && LD_PRELOAD="$libasan $libstdcxx" \
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1:log_path=$logs/asan" \
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=0" \
        PYTHONFAULTHANDLER=1 "$PYTHON" -m pytest --capture=no "${PYTEST_ARGS[@]}" 2>&1 \
        | tee "$logs/pytest.log" | grep -v "^ *#[0-9]" | grep -E -v "^\s*$" | tail -25
        exit "${PIPESTATUS[0]}") || status=$?
    local ub
    ub=$(grep -c "runtime error:" "$logs/pytest.log" || true)
    if compgen -G "$logs/asan.*" > /dev/null || [[ $ub -gt 0 ]]; then
        echo "== sanitizer reports: $ub UBSan, ASan logs: $(compgen -G "$logs/asan.*" | wc -l)"
        for f in $(compgen -G "$logs/asan.*"); do echo "--- $f"; head -40 "$f"; done
        # one line per distinct UBSan report (addresses masked)
        grep -hoE "[A-Za-z_][A-Za-z0-9_./-]*:[0-9]+:[0-9]+: runtime error: .*" \
            "$logs/pytest.log" | sed -E 's/0x[0-9a-f]+/ADDR/g' | sort | uniq -c | sort -rn \
            | head -30
        [[ $status -eq 0 ]] && status=1
    else
        echo "== no ASan/UBSan reports"
    fi
    echo "== asan run: exit status $status"
    return "$status"
}

run_boundscheck() {
    local dest=$BASE/boundscheck
    copy_tree "$dest"
    # The stubs' header comments (# cython: boundscheck=False, wraparound=False) override the
    # directives setup.py passes to cythonize, so CSOFTMAX_BOUNDSCHECK=1 alone changes nothing:
    # turn the checks on in the copy's headers too, and make sure they are in the C++.
    sed -i 's/boundscheck=False/boundscheck=True/; s/wraparound=False/wraparound=True/' \
        "$dest"/src/_kernels*.pyx
    build "$dest" CSOFTMAX_BOUNDSCHECK=1
    local checks
    checks=$(cat "$dest"/src/_kernels*.cpp | grep -c "__Pyx_RaiseBufferIndexError" || true)
    echo "== bounds checks in the generated C++: $checks"
    [[ $checks -gt 0 ]] || { echo "no bounds checks were compiled in"; return 1; }
    echo "== pytest with Cython boundscheck/wraparound on: ${PYTEST_ARGS[*]}"
    local status=0
    (cd "$dest" && PYTHONFAULTHANDLER=1 "$PYTHON" -m pytest "${PYTEST_ARGS[@]}") || status=$?
    echo "== boundscheck run: exit status $status"
    return "$status"
}

status=0
case $MODE in
    asan) run_asan || status=$? ;;
    boundscheck) run_boundscheck || status=$? ;;
    all)
        run_asan || status=$?
        run_boundscheck || status=$((status ? status : $?))
        ;;
    *) echo "usage: $0 [asan|boundscheck|all] [pytest args...]" >&2; exit 2 ;;
esac
exit "$status"
