#!/usr/bin/env bash
# cibuildwheel before-all on macOS: unpack a pinned LLVM OpenMP runtime (libomp + omp.h) for
# each macOS architecture into PREFIX/osx-64 and PREFIX/osx-arm64.
#
#   bash tools/cibw_macos_openmp.sh /tmp/csoftmax-libomp
#
# Apple's clang compiles OpenMP (-Xpreprocessor -fopenmp, which setup.py probes) but ships no
# runtime.  delocate copies libomp.dylib into each wheel, so the copy used must run on the
# oldest macOS the wheel claims: Homebrew's bottle is built for the runner's own macOS, while
# conda-forge's llvm-openmp 11.1.0 is built for macOS 10.9 (x86_64) and 11.0 (arm64), below
# the deployment targets set in pyproject.toml (10.13 and 11.0).  scikit-learn builds its
# wheels against the same packages.  The package archives are plain tar.bz2 files, so no conda
# is needed.  pyproject.toml's [[tool.cibuildwheel.overrides]] point CPPFLAGS, LDFLAGS and
# LIBRARY_PATH at the right directory for each architecture.
set -euo pipefail

PREFIX="${1:-/tmp/csoftmax-libomp}"
VERSION=11.1.0
CHANNEL=https://conda.anaconda.org/conda-forge
# subdir  build   sha256 of the archive (empty: printed, not checked -- record it here)
PACKAGES=(
    "osx-64     hda6cdc1_1  ${CSOFTMAX_LIBOMP_SHA256_OSX_64:-}"
    "osx-arm64  hf3c4609_1  ${CSOFTMAX_LIBOMP_SHA256_OSX_ARM64:-}"
)

for entry in "${PACKAGES[@]}"; do
    read -r subdir build sha <<<"$entry"
    dest="$PREFIX/$subdir"
    if [[ -f "$dest/lib/libomp.dylib" && -f "$dest/include/omp.h" ]]; then
        echo "libomp for $subdir already in $dest"
        continue
    fi
    archive="$(mktemp -d)/llvm-openmp-$VERSION-$build.tar.bz2"
    curl --fail --location --retry 3 --silent --show-error -o "$archive" \
        "$CHANNEL/$subdir/llvm-openmp-$VERSION-$build.tar.bz2"
    got="$(shasum -a 256 "$archive" | cut -d' ' -f1)"
    echo "llvm-openmp $VERSION $subdir ($build): sha256 $got"
    if [[ -n "$sha" && "$got" != "$sha" ]]; then
        echo "sha256 mismatch for $archive: expected $sha" >&2
        exit 1
    fi
    mkdir -p "$dest"
    tar -xjf "$archive" -C "$dest"
    test -f "$dest/lib/libomp.dylib" && test -f "$dest/include/omp.h"
    # the install name is @rpath/libomp.dylib: LDFLAGS adds an rpath to $dest/lib, through
    # which delocate finds the library to copy into the wheel
    otool -D "$dest/lib/libomp.dylib" || true
done
