#!/usr/bin/env bash
# Makes Tests/Variants: conformance cases in the golden format (other shapes, seeds, strings and two more tiny DiT
# configs than ../shared/golden), computed by the official Wan2.1 code on the CPU in float32.
#   scripts/variants/make.sh WAN21_CHECKOUT [OUT]
# WAN21_CHECKOUT: a checkout of github.com/Wan-Video/Wan2.1 (the folder holding wan/). Needs PyPI (torch, ...), not a GPU.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
src="${1:?usage: scripts/variants/make.sh WAN21_CHECKOUT [OUT]}"
out="${2:-$repo/Tests/Variants}"
golden="$(cd "$repo/../shared/golden" && pwd)"
venv="${WANKIT_VARIANTS_VENV:-$HOME/.cache/wankit/variants-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  # transformers 4.x runs tokenizer.json as written (see the golden README); diffusers 0.33 matches its hub client.
  "$venv/bin/pip" install -q torch numpy safetensors einops ftfy regex sentencepiece "transformers<5" "diffusers==0.33.1" pillow
  "$venv/bin/pip" install -q --no-deps torchvision
fi
mkdir -p "$out/cases" "$out/weights"
# The golden models the cases also use, and the tokenizer: relative links to ../shared/golden.
for f in "$golden"/weights/*; do
  [ -e "$out/weights/$(basename "$f")" ] || ln -s "$(python3 -c 'import os,sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$f" "$out/weights")" "$out/weights/"
done
[ -e "$out/tokenizer" ] || ln -s "$(python3 -c 'import os,sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$golden/tokenizer" "$out")" "$out/tokenizer"
export WAN21_SRC="$(cd "$src" && pwd)"
cd "$here"
"$venv/bin/python" gen.py "$out" "$golden"
"$venv/bin/python" pipe.py "$out" "$golden" none
"$venv/bin/python" misc.py "$out" "$golden" none
"$venv/bin/python" tok.py "$out" "$golden"
"$venv/bin/python" rng.py "$out"
echo "wrote $(ls "$out/cases" | grep -c json) cases to $out"
