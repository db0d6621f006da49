#!/usr/bin/env bash
# Puts NVRTC (the CUDA runtime compiler) on this machine for the CUDA kernel compile test, which needs no GPU, and
# prints the path of libnvrtc.so.13 on stdout. Source: PyPI's nvidia-cuda-nvrtc wheel (NVIDIA's CUDA 13 NVRTC),
# installed once with pip into ~/.cache/wankit (or $XDG_CACHE_HOME/wankit). Never fails: where pip or the download
# is unavailable it prints nothing, says why on stderr, and the test skips visibly.
set -uo pipefail
if [ -n "${WANKIT_NVRTC:-}" ] && [ -f "$WANKIT_NVRTC" ]; then echo "$WANKIT_NVRTC"; exit 0; fi
version=13.0.88   # the CUDA 13.0 release the GPU machines have
dir="${XDG_CACHE_HOME:-$HOME/.cache}/wankit/nvrtc-$version"
lib="$dir/nvidia/cu13/lib/libnvrtc.so.13"
if [ ! -f "$lib" ]; then
  echo "install-nvrtc: installing nvidia-cuda-nvrtc==$version (about 90 MB, once) into $dir" >&2
  rm -rf "$dir.tmp"
  if timeout 300 python3 -m pip install --quiet --disable-pip-version-check --no-deps --no-compile \
       --target "$dir.tmp" "nvidia-cuda-nvrtc==$version" >&2 && [ -f "$dir.tmp/nvidia/cu13/lib/libnvrtc.so.13" ]; then
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
    # The wheel's .alt copies (an alternative build) are not used: drop them to halve the cache.
    rm -f "$dir"/nvidia/cu13/lib/*.alt.so.*
  else
    rm -rf "$dir.tmp"
    echo "install-nvrtc: could not install NVRTC with pip; the CUDA kernel compile test will be skipped" >&2
    exit 0
  fi
fi
echo "$lib"
