#!/usr/bin/env bash
# Installs the part of the CUDA toolkit that `cargo build --features cuda` needs, from
# NVIDIA's PyPI wheels, into a git-ignored venv next to this script; then prints the
# environment to build (and run) with. Usage:
#
#     eval "$(bash tools/cuda/setup_nvcc.sh)"      # or: bash tools/cuda/setup_nvcc.sh; source tools/cuda/env.sh
#
# Why these wheels: NVIDIA's `*-cu12` nvcc wheels hold ptxas and libnvvm but no `nvcc`
# driver program; the CUDA 13 wheels (`cuda-toolkit` meta-package) ship a complete nvcc
# and lay every component out under one root, `site-packages/nvidia/cu13/{bin,include,
# lib,nvvm}`, which is what candle's build scripts want:
#   - candle-kernels (via cudaforge) finds nvcc through $NVCC, PATH or $CUDA_HOME/bin and
#     compiles for $CUDA_COMPUTE_CAP (it asks nvidia-smi only when that is unset);
#   - cudarc runs `nvcc --version` from PATH to pick its CUDA API version, and links
#     -lcuda -lnvrtc -lcurand -lcublas -lcublasLt (candle-kernels adds -lcudart) from
#     $CUDA_HOME/{lib,lib/stubs,lib64,...}.
# The wheels ship only versioned `libX.so.N`, so this script adds the `libX.so` links the
# linker looks for, and a link-time stub `lib/stubs/libcuda.so` (soname libcuda.so.1)
# generated from the wheel's cuda.h: the driver library itself comes with the GPU
# driver, never from a wheel, and the stub is never on the runtime library path.
#
# Running the result needs an NVIDIA driver that supports CUDA 13.0 (R580 or newer).
#
# Environment knobs: CUDA_COMPUTE_CAP (default 90: H100/H200; 80 for A100, 89 for L4/
# RTX 40xx), GLIMPSE_CUDA_VENV (default tools/cuda/.venv), PYTHON (default python3).
set -euo pipefail

# Pinned: the meta-package pins each component (nvcc 13.0.88, cudart 13.0.96, cuBLAS
# 13.1.0.3, cuRAND 10.4.0.35). cudarc 0.19 knows CUDA 11.4 to 13.4.
# cccl: nvcc 13 includes <nv/target> (libcu++) from cuda_fp16.h.
CUDA_TOOLKIT_WHEEL="cuda-toolkit[nvcc,crt,nvvm,cccl,cudart,nvrtc,curand,cublas]==13.0.2"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv=${GLIMPSE_CUDA_VENV:-$here/.venv}
python=${PYTHON:-python3}
compute_cap=${CUDA_COMPUTE_CAP:-90}

log() { echo "setup_nvcc: $*" >&2; }

if [ ! -x "$venv/bin/python" ]; then
    log "creating $venv"
    "$python" -m venv "$venv"
fi
stamp=$venv/.glimpse-cuda-requirement
if [ "$(cat "$stamp" 2>/dev/null)" != "$CUDA_TOOLKIT_WHEEL" ]; then
    log "installing $CUDA_TOOLKIT_WHEEL (about 1.2 GB unpacked)"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$CUDA_TOOLKIT_WHEEL" >&2
    echo "$CUDA_TOOLKIT_WHEEL" > "$stamp"
fi

root=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia/cu13
[ -x "$root/bin/nvcc" ] || { log "no nvcc at $root/bin/nvcc after install"; exit 1; }

# libX.so -> libX.so.N for each library the linker is asked for by name.
for name in cudart nvrtc curand cublas cublasLt; do
    versioned=$(cd "$root/lib" && ls "lib$name.so."* 2>/dev/null | sort | head -n 1 || true)
    [ -n "$versioned" ] || { log "no lib$name.so.* in $root/lib"; exit 1; }
    ln -sfn "$versioned" "$root/lib/lib$name.so"
done

# Link-time stub for the driver API: every cu* function cuda.h declares, under both its
# plain and its versioned (`#define cuX cuX_v2`) names, each a function that is never
# called because at run time the loader finds the real libcuda.so.1 instead.
stub_dir=$root/lib/stubs
if [ ! -e "$stub_dir/libcuda.so" ] || [ "$root/include/cuda.h" -nt "$stub_dir/libcuda.so" ]; then
    log "generating link stub $stub_dir/libcuda.so"
    mkdir -p "$stub_dir"
    {
        grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' "$root/include/cuda.h" | tr -d ' \t('
        sed -nE 's/^[[:space:]]*#[[:space:]]*define[[:space:]]+cu[A-Z][A-Za-z0-9_]*[[:space:]]+(cu[A-Z][A-Za-z0-9_]*)[[:space:]]*$/\1/p' "$root/include/cuda.h"
    } | sort -u | sed 's/.*/int &(void) { return 999; }/' > "$stub_dir/cuda_stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub_dir/libcuda.so" "$stub_dir/cuda_stub.c"
fi

env_file=$here/env.sh
cat > "$env_file" <<ENV
# Written by tools/cuda/setup_nvcc.sh: source it before cargo build/test --features cuda.
export CUDA_HOME="$root"
export PATH="$root/bin:\$PATH"
export CUDA_COMPUTE_CAP="$compute_cap"
# For running on a GPU machine: cuBLAS, cuRAND, NVRTC and cudart from the wheels
# (libcuda.so.1 comes from the installed driver).
export LD_LIBRARY_PATH="$root/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
ENV
log "$("$root/bin/nvcc" --version | tail -n 2 | head -n 1)"
log "wrote $env_file; the exports:"
cat "$env_file"
