"""Build of csoftmax's compiled kernels.

One Cython source (src/kernels.pxi) is compiled three times, for the baseline
instruction set of the target and, on x86-64, for AVX2+FMA and for AVX-512; the
package picks the fastest one the CPU supports at import (CSOFTMAX_CPU
overrides).  OpenMP is probed by compiling a tiny program; without it the
build still succeeds and the kernels run on one thread, unless
CSOFTMAX_REQUIRE_OPENMP=1 (wheel builds) turns that into an error.
CSOFTMAX_DISABLE_OPENMP=1 builds the serial kernels on purpose (to test them).

Never -march=native (wheels must run anywhere) and never -ffast-math (softmax
needs inf and NaN semantics; it can also set flush-to-zero process-wide).
"""

import os
import platform
import shlex
import sys
import tempfile
import textwrap

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPENMP_TEST = textwrap.dedent(
    """
    #include <omp.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        return omp_get_max_threads() > 0 && n > 0 ? 0 : 1;
    }
    """
)

# Extra flags per instruction-set variant (GCC / Clang on x86-64).
X86_VARIANTS = {
    "": [],
    "_avx2": ["-mavx2", "-mfma", "-mf16c"],
    "_avx512": [
        "-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl",
        "-mavx2", "-mfma", "-mf16c", "-mprefer-vector-width=512",
    ],
}

# Flags a variant takes where the compiler knows them (probed).  GCC's generic
# tuning copies small arrays (a block's 16 sums, s = acc) 16 bytes at a time
# even with AVX2; the 32-byte vector load that follows a pair of such stores
# cannot be forwarded from them and waits for the cache: 1.35x the time of the
# AVX2 short-row loss (65536x10).  GCC >= 12 moves 32 bytes at a time with
# these; AVX-512 (512-bit moves) did not gain, measured.
X86_OPTIONAL_FLAGS = {"_avx2": ["-mmove-max=256", "-mstore-max=256"]}
# Functions on 64-byte lines and loops on 32-byte fetch blocks: otherwise where the
# linker happens to put a hot loop moves with unrelated code, and two builds of the
# same kernel differed by up to 10% (AVX2, AMD Zen 3: the loss + gradient of
# 8192x1000 1.06-1.12x the time in a build whose row_exp_store_sum started 16 bytes
# into a line, softmax 1.07-1.12x in another; aligned builds were the faster of each).
ALIGN_FLAGS = ["-falign-functions=64", "-falign-loops=32"]


def _is_x86_64():
    return platform.machine().lower() in ("x86_64", "amd64")


def _openmp_flags(compiler):
    """(compile flags, link flags) that enable OpenMP, or None if it fails."""
    if compiler.compiler_type == "msvc":
        candidates = [(["/openmp"], [])]
    elif sys.platform == "darwin":
        candidates = [(["-Xpreprocessor", "-fopenmp"], ["-lomp"]), (["-fopenmp"], ["-fopenmp"])]
    else:
        candidates = [(["-fopenmp"], ["-fopenmp"])]
    # distutils links executables without $LDFLAGS (only the extensions get
    # them): pass them to the probe too, so it finds a libomp outside the
    # default paths (macOS wheels)
    env_ldflags = shlex.split(os.environ.get("LDFLAGS", ""))
    for cflags, lflags in candidates:
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "omp_probe.c")
            with open(src, "w") as f:
                f.write(OPENMP_TEST)
            try:
                objs = compiler.compile([src], output_dir=tmp, extra_postargs=cflags)
                compiler.link_executable(
                    objs, "omp_probe", output_dir=tmp, extra_postargs=lflags + env_ldflags
                )
            except Exception:  # any compile/link failure means "no OpenMP"
                continue
            return cflags, lflags
    return None


def _compiler_accepts(compiler, flags):
    """Whether the compiler compiles a trivial C file with these flags."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "flag_probe.c")
        with open(src, "w") as f:
            f.write("int csoftmax_flag_probe(void) { return 0; }\n")
        try:
            compiler.compile([src], output_dir=tmp, extra_postargs=list(flags))
        except Exception:  # an unknown flag is a compile error
            return False
    return True


class BuildExt(build_ext):
    """Adds OpenMP and per-compiler optimisation flags once the compiler is known."""

    def build_extensions(self):
        omp = None
        if os.environ.get("CSOFTMAX_DISABLE_OPENMP") != "1":
            omp = _openmp_flags(self.compiler)
        if omp is None:
            if os.environ.get("CSOFTMAX_REQUIRE_OPENMP", "0") == "1":
                raise RuntimeError(
                    "CSOFTMAX_REQUIRE_OPENMP=1 but the compiler cannot build OpenMP code"
                )
            print("csoftmax: OpenMP not found, building serial kernels", file=sys.stderr)
        msvc = self.compiler.compiler_type == "msvc"
        if msvc:
            base = ["/O2", "/fp:precise"]
        else:
            base = [
                "-O3",
                "-fno-math-errno",      # lets exp/log/sqrt be inlined and vectorised
                "-fno-trapping-math",   # lets the clamps of exp_poly be if-converted
                "-fopenmp-simd",        # honours `omp simd` even in a serial build
                "-Wno-unused-function",
            ]
            if os.environ.get("CSOFTMAX_SANITIZE"):
                base += ["-fsanitize=" + os.environ["CSOFTMAX_SANITIZE"], "-g", "-O1"]
        if not msvc and _compiler_accepts(self.compiler, ALIGN_FLAGS):
            base += ALIGN_FLAGS
        for ext in self.extensions:
            ext.extra_compile_args = base + ext.extra_compile_args
            optional = X86_OPTIONAL_FLAGS.get(ext.name.rpartition("_kernels")[2], [])
            if optional and not msvc and _compiler_accepts(self.compiler, optional):
                ext.extra_compile_args = ext.extra_compile_args + optional
            if omp is not None:
                ext.extra_compile_args = ext.extra_compile_args + omp[0]
                ext.extra_link_args = ext.extra_link_args + omp[1]
            if os.environ.get("CSOFTMAX_SANITIZE") and not msvc:
                ext.extra_link_args = ext.extra_link_args + [
                    "-fsanitize=" + os.environ["CSOFTMAX_SANITIZE"]
                ]
        super().build_extensions()


def _extensions():
    variants = X86_VARIANTS if _is_x86_64() and sys.platform != "win32" else {"": []}
    if os.environ.get("CSOFTMAX_BASELINE_ONLY") == "1":
        variants = {"": []}
    return [
        Extension(
            f"csoftmax._kernels{suffix}",
            [f"src/_kernels{suffix}.pyx"],
            include_dirs=["src", np.get_include()],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
            extra_compile_args=list(flags),
            language="c++",
        )
        for suffix, flags in variants.items()
    ]


checks = os.environ.get("CSOFTMAX_BOUNDSCHECK") == "1"
setup(
    ext_modules=cythonize(
        _extensions(),
        compiler_directives={"boundscheck": checks, "wraparound": checks},
        include_path=["src"],
    ),
    cmdclass={"build_ext": BuildExt},
)
