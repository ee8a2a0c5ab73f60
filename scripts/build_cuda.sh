#!/usr/bin/env bash
# Build `zerank-server --features cuda` on a machine with no GPU and no system
# CUDA toolkit, using NVIDIA's PyPI wheels as the toolkit. Idempotent.
#
#   scripts/build_cuda.sh [extra cargo args...]
#
# Env knobs:
#   CUDA_COMPUTE_CAP   GPU arch for the candle kernels (default 90 = H100/H200)
#   CARGO_TARGET_DIR   cargo target dir (default: <repo>/target/cuda, see below)
#   CUDA_TOOLKIT_DIR   where the wheels go (default: <repo>/target/cuda-toolkit)
#   PYTHON             python used for pip (default: python3)
#
# Run time: the binary NEEDs libcudart.so.13, libcublas.so.13, libcurand.so.10
# and the driver's libcuda.so.1; libcublas.so.13 in turn loads
# libcublasLt.so.13. On the GPU machine point LD_LIBRARY_PATH at the PyTorch
# venv's nvidia/cu13/lib (libcuda.so.1 comes with the driver).
# CUDA_COMPUTE_CAP=90 makes cudaforge emit sm_90a code: H100/H200 only.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
PYTHON="${PYTHON:-python3}"

# --- 1. Pinned wheels --------------------------------------------------------
# CUDA 13.0 update 2, i.e. the set PyPI's `cuda-toolkit==13.0.2` pins. 13.0
# because the GPU machines run a 13.0 driver (580.x) and PyTorch 2.11+cu130:
# PTX from a newer nvcc would not JIT on that driver, and the sonames (.so.13)
# match the libraries in PyTorch's venv. cudarc 0.19.10 knows 11.4..13.4.
WHEELS=(
  nvidia-cuda-nvcc==13.0.88     # nvcc, ptxas, fatbinary, nvlink
  nvidia-nvvm==13.0.88          # cicc + libdevice (nvcc's backend; separate wheel since 13.0)
  nvidia-cuda-crt==13.0.88      # include/crt/*.h (host_config.h etc.)
  nvidia-cuda-runtime==13.0.96  # cudart headers + libcudart.so.13
  nvidia-cuda-cccl==13.0.85     # include/cccl (cub/thrust/libcu++), used by the kernels
  nvidia-cublas==13.1.0.3       # libcublas.so.13, libcublasLt.so.13
  nvidia-curand==10.4.0.35      # libcurand.so.10
  nvidia-cuda-nvrtc==13.0.88    # libnvrtc.so.13
)
# Strip the comments to get the pip requirement list.
REQS=()
for w in "${WHEELS[@]}"; do REQS+=("${w%%#*}"); done
CUDARC_VERSION_TAG=13000   # CUDARC_CUDA_VERSION format: major 0 minor 0

TOOLKIT_DIR="${CUDA_TOOLKIT_DIR:-$REPO_ROOT/target/cuda-toolkit}"
STAMP="$TOOLKIT_DIR/.installed"
WANT="$(printf '%s\n' "${REQS[@]}")"

if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
  echo ">> installing CUDA wheels into $TOOLKIT_DIR"
  # Install into a fresh sibling dir and swap it in, so a half-finished pip run
  # never looks installed (pip --target also refuses to overwrite cleanly).
  tmp="$TOOLKIT_DIR.tmp.$$"
  rm -rf "$tmp"
  # --no-deps: the list above is complete; deps would drag in other versions.
  "$PYTHON" -m pip install --quiet --no-deps --no-compile --only-binary=:all: \
    --target "$tmp" "${REQS[@]}"
  rm -rf "$TOOLKIT_DIR"
  mv "$tmp" "$TOOLKIT_DIR"
  printf '%s\n' "$WANT" >"$STAMP"
else
  echo ">> CUDA wheels already installed in $TOOLKIT_DIR"
fi

# --- 2. Make the wheel folder look like a CUDA root ----------------------------
# The CUDA 13 wheels all unpack into one nvidia/cu13 tree with bin/ nvvm/
# include/ lib/; nvcc.profile resolves everything relative to bin/.., so that
# tree is the CUDA root. What it lacks for linking:
CUDA_ROOT="$TOOLKIT_DIR/nvidia/cu13"
[[ -x "$CUDA_ROOT/bin/nvcc" ]] || { echo "no nvcc in $CUDA_ROOT/bin" >&2; exit 1; }
LIB="$CUDA_ROOT/lib"

# cudaforge (candle-kernels' build helper) expects <root>/lib64.
[[ -e "$CUDA_ROOT/lib64" ]] || ln -s lib "$CUDA_ROOT/lib64"

# The wheels only ship versioned sonames (libcublas.so.13); `-lcublas` needs
# libcublas.so. Link each one to its unversioned name.
for so in "$LIB"/lib*.so.*; do
  base="$(basename "$so")"
  [[ "$base" == *.alt.so* ]] && continue          # nvrtc's alternate build, not linked
  plain="${base%%.so.*}.so"
  [[ -e "$LIB/$plain" ]] || ln -s "$base" "$LIB/$plain"
done

# candle enables cudarc's `driver` feature with dynamic linking => `-lcuda`.
# libcuda comes with the GPU driver, which no wheel ships. Like the toolkit's
# own lib64/stubs/libcuda.so, build a link-time stub: every driver entry point
# cudarc can reference, as an empty function, with soname libcuda.so.1 so the
# binary ends up needing the real driver library at run time. Never put this
# dir on LD_LIBRARY_PATH.
STUBS="$LIB/stubs"
CUDARC_SRC="$(cargo metadata --format-version 1 --features cuda 2>/dev/null \
  | "$PYTHON" -c 'import json,sys,os
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "cudarc": print(os.path.dirname(p["manifest_path"]))')"
[[ -n "$CUDARC_SRC" ]] || { echo "cudarc not found by cargo metadata" >&2; exit 1; }
STUB_KEY="$CUDARC_SRC"
if [[ ! -f "$STUBS/libcuda.so" || "$(cat "$STUBS/.key" 2>/dev/null)" != "$STUB_KEY" ]]; then
  echo ">> building libcuda.so link stub from $CUDARC_SRC"
  mkdir -p "$STUBS"
  grep -ohE '\bfn cu[A-Za-z0-9_]+\(' "$CUDARC_SRC/src/driver/sys/mod.rs" \
    | sed -E 's/^fn (cu[A-Za-z0-9_]+)\($/void \1(void) {}/' | sort -u >"$STUBS/libcuda_stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$STUBS/libcuda.so" "$STUBS/libcuda_stub.c"
  echo "$STUB_KEY" >"$STUBS/.key"
fi

# --- Environment for cudarc / cudaforge / the linker ---------------------------
# cudarc: version from `nvcc --version` (pinned anyway), -L from CUDA_ROOT etc.
# cudaforge: nvcc from $NVCC / PATH, headers from <root>/include.
export CUDA_ROOT CUDA_HOME="$CUDA_ROOT" CUDA_PATH="$CUDA_ROOT" CUDA_TOOLKIT_ROOT_DIR="$CUDA_ROOT"
export NVCC="$CUDA_ROOT/bin/nvcc"
export PATH="$CUDA_ROOT/bin:$PATH"
export CUDARC_CUDA_VERSION="$CUDARC_VERSION_TAG"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"   # no GPU here => no nvidia-smi to ask
export LIBRARY_PATH="$LIB:$STUBS${LIBRARY_PATH:+:$LIBRARY_PATH}"
# Build scripts never load CUDA libs, but nvcc's helpers may want libnvvm etc.
export LD_LIBRARY_PATH="$LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# Separate target dir by default: cargo uplifts the final binary to
# <target>/release/zerank-server whatever the features, so sharing the default
# target/ would overwrite the CPU build (and the cuda binary won't even start
# without libcuda.so.1). It also keeps the release-dir lock free for others.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target/cuda}"

"$NVCC" --version | tail -2
echo ">> CUDA_ROOT=$CUDA_ROOT CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP CARGO_TARGET_DIR=$CARGO_TARGET_DIR"

# --- 3. Build --------------------------------------------------------------------
# nice: don't steal the CPU from whoever else is using this machine.
start=$(date +%s)
nice -n 19 cargo build --release --features cuda "$@"
echo ">> build took $(( $(date +%s) - start ))s"

BIN="$CARGO_TARGET_DIR/release/zerank-server"
echo ">> binary: $BIN ($(du -h "$BIN" | cut -f1))"
echo ">> NEEDED (sonames to provide at run time):"
readelf -d "$BIN" | awk '/NEEDED/ {print "   ", $NF}' | tr -d '[]'
echo ">> ldd here (libcuda.so.1 is expected to be missing on a GPU-less host):"
# Exclude the stub dir so ldd shows what the real runtime lookup would do.
LD_LIBRARY_PATH="$LIB" ldd "$BIN" | sed 's/^/    /' || true
cat <<EOF
>> on the GPU machine:
   export LD_LIBRARY_PATH=\$(python3 -c 'import nvidia,os;print(os.path.join(list(nvidia.__path__)[0],"cu13","lib"))'):\$LD_LIBRARY_PATH
EOF
