#!/usr/bin/env bash
# Type-checks and builds Espalier with the `cuda` feature on a machine
# WITHOUT a GPU (by hand; not run by CI), with NVIDIA's CUDA toolkit from PyPI:
#   scripts/check-cuda.sh                 # venv in /opt/cudatk13, kernels for compute capability 9.0 (H100/H200)
#   CUDA_COMPUTE_CAP=80 scripts/check-cuda.sh
# It installs `cuda-toolkit[nvcc,cudart,cublas,curand,nvrtc,cccl]==13.4.*` (CUDA 13.4, the newest
# release cudarc 0.19.10 knows; 13.5 is refused by its build script) into a
# venv if missing, points candle's build (nvcc for candle-kernels, cudarc's
# version detection) at it, then:
#   1. cargo check of every target with the feature;
#   2. a release build of the `espalier` binary with `--features cuda` (linked
#      against a generated libcuda stub when no driver or CUDA_STUBS is present);
#   3. the test executables with the feature (`--no-run`), to carry to a GPU
#      machine (which has no Rust toolchain) and run there.
# Output of the last run: results/cuda/check-cuda.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CUDA_VENV:-/opt/cudatk13}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install "cuda-toolkit[nvcc,cudart,cublas,curand,nvrtc,cccl]==13.4.*"
fi
CUDA_ROOT=$(echo "$VENV"/lib/python3*/site-packages/nvidia/cu13)
[ -x "$CUDA_ROOT/bin/nvcc" ] || { echo "error: no nvcc under $CUDA_ROOT" >&2; exit 1; }
# The wheels ship lib/ but tools look for lib64/.
[ -e "$CUDA_ROOT/lib64" ] || ln -s lib "$CUDA_ROOT/lib64"
export CUDA_ROOT CUDA_PATH=$CUDA_ROOT CUDA_TOOLKIT_ROOT_DIR=$CUDA_ROOT
export PATH=$CUDA_ROOT/bin:$PATH
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda}
CARGO_TARGET_DIR_LINKS=$CARGO_TARGET_DIR/cuda-link
# The wheels ship versioned libraries only (libcudart.so.13, ...): the linker
# wants the unversioned names. And libcuda.so is the driver's: link against a
# stub from a full toolkit (CUDA_STUBS=.../lib64/stubs) or the driver itself.
LINKS=$CARGO_TARGET_DIR_LINKS
mkdir -p "$LINKS"
for f in "$CUDA_ROOT"/lib/lib*.so.*; do
  base=$(basename "$f"); ln -sfn "$f" "$LINKS/${base%%.so.*}.so"
done
if [ -n "${CUDA_STUBS:-}" ]; then ln -sfn "$CUDA_STUBS/libcuda.so" "$LINKS/libcuda.so"; fi
export LIBRARY_PATH=$LINKS:$CUDA_ROOT/lib:${LIBRARY_PATH:-}
echo "== $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores, no GPU; CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP"
nvcc --version | tail -2
echo "== cargo check --workspace --all-targets --features espalier/cuda"
cargo check --workspace --all-targets --features espalier/cuda --locked
if [ ! -e "$LINKS/libcuda.so" ]; then
  # No driver here: a link-time stub, as a full toolkit's lib64/stubs/libcuda.so
  # is. It defines (as empty functions) every driver-API symbol (`cu[A-Z]*`) that
  # the compiled libraries reference, under the SONAME libcuda.so.1, so that on
  # a GPU machine the real driver library is the one loaded.
  echo "== no libcuda.so: generating a link-time stub from the driver symbols the libraries use"
  # The libraries compile; only the final link of the binary fails without it.
  cargo build --release -p espalier --features cuda --locked -q 2>/dev/null || true
  for f in "$CARGO_TARGET_DIR"/release/deps/lib*.rlib; do nm "$f" 2>/dev/null | awk '$1 == "U" && $2 ~ /^cu[A-Z]/ {print $2}'; done \
    | sort -u > "$LINKS/libcuda.syms"
  awk '{print "void " $1 "(void) {}"}' "$LINKS/libcuda.syms" > "$LINKS/libcuda_stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$LINKS/libcuda.so" "$LINKS/libcuda_stub.c"
  echo "   $(wc -l < "$LINKS/libcuda.syms") driver symbols stubbed"
fi
echo "== cargo build --release -p espalier --features cuda"
cargo build --release -p espalier --features cuda --locked
echo "== test executables (cargo test --release --workspace --features espalier/cuda --no-run)"
cargo test --release --workspace --features espalier/cuda,espalier/shared-data --no-run --locked 2>&1 | grep -E "Executable|Finished" || true
bin="$CARGO_TARGET_DIR/release/espalier"
ls -la "$bin"
echo "== the CUDA binary without a GPU: a clear error, exit code non-zero"
set +e
"$bin" run configs/quickstart.toml --device cuda --out "$CARGO_TARGET_DIR/no-gpu-run" 2>&1 | tail -1
echo "exit code ${PIPESTATUS[0]}"
