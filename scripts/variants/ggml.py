"""Tests/Variants/ggml: one GGUF file holding a [4, 512] tensor (or [4, 64] for 32-element blocks) of every ggml block
type WanKit dequantises, filled with random block bytes (the f16 scale fields set to finite values of moderate size),
and the values llama.cpp's own Python reader (gguf-py, `gguf.quants.dequantize`) gives for them.
Usage: python ggml.py OUT_DIR"""
import sys, os
import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from safetensors.numpy import save_file

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(2026)

# byte offsets of the f16 scale fields in each block (d, and dmin / m where the type has one)
F16_FIELDS = {
    Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q8_0: [0],
    Q.Q2_K: [80, 82], Q.Q3_K: [108], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208],
}


def blocks(qtype, n):
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n, block_bytes), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        vals = (rng.uniform(0.001, 0.05, size=n) * rng.choice([-1, 1], size=n)).astype(np.float16)
        raw[:, off:off + 2] = vals.view(np.uint8).reshape(n, 2)
    return raw


writer = gguf.GGUFWriter(os.path.join(out, "ggml_types.gguf"), "wan")
expected = {}
for qtype in F16_FIELDS:
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    rows, cols = 4, 2 * block_elems
    raw = blocks(qtype, rows * cols // block_elems).reshape(rows, cols // block_elems * block_bytes)
    values = gguf.quants.dequantize(raw, qtype).astype(np.float32).reshape(rows, cols)
    assert np.isfinite(values).all()
    name = f"blocks.0.ffn.0.{qtype.name.lower()}.weight"
    writer.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qtype)
    expected[name] = values
writer.write_header_to_file()
writer.write_kv_data_to_file()
writer.write_tensors_to_file()
writer.close()
save_file(expected, os.path.join(out, "ggml_types_expected.safetensors"))
print("wrote", len(expected), "tensors")
