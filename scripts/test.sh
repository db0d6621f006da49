#!/usr/bin/env bash
# The test command: installs dependencies, builds in release mode, runs the golden conformance cases
# (../shared/golden) and the unit tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# NVRTC for the CUDA kernel compile test (no GPU needed); empty where pip cannot get it (the test then skips).
export WANKIT_NVRTC="$(scripts/install-nvrtc.sh || true)"
swift build -c release --build-tests
golden="../shared/golden"
if [ -d "$golden/cases" ]; then
  .build/release/wan conformance "$golden"
  # More shapes, seeds, strings and two more tiny DiT configs, made by the official code (scripts/variants/make.sh).
  .build/release/wan conformance Tests/Variants
else
  echo "test: no golden data at $golden; the golden tests will be skipped" >&2
fi
swift test -c release --skip-build --disable-swift-testing
