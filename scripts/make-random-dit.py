#!/usr/bin/env python3
"""Write a Wan2.1 DiT checkpoint of random weights in the real shapes, in a published file format.

For memory and speed benchmarks of the loaders and of compute on compact weights (`wan bench dit --weights FILE`)
where the real checkpoints cannot be downloaded. The values are random (uniform in about +-1/sqrt(fan_in), norms 1),
not a model: only shapes, names, dtypes and block formats are real.

Formats:
  f32, f16, bf16   safetensors, official names, every tensor in that dtype
  fp8_scaled       ComfyUI "fp8_scaled" safetensors: every 2-D Linear `<m>.weight` float8_e4m3fn plus a float32 0-d
                   `<m>.scale_weight`, a 0-element float8_e4m3fn marker `scaled_fp8`, every other tensor bfloat16
  q4_k, q8_0       GGUF v3 laid out as city96's Wan GGUFs: the Linear weights inside blocks.* quantised (Q4_K or
                   Q8_0); the other weights F16; 1-D tensors, tensors of <= 1024 elements and every *.modulation F32;
                   the 5-D patch_embedding.weight F32 with all 5 dims. Q4_K blocks hold random nibbles and 6-bit
                   scales with sane f16 d / dmin (valid blocks, not a quantisation of anything).

Needs Python 3 and numpy only. Tensors are made and written one at a time, so memory stays at the largest tensor.

  scripts/make-random-dit.py --preset t2v-1.3B --format q4_k --output /tmp/wan-1.3B-q4_k.gguf
"""
import argparse
import json
import os
import struct
import sys
import time

import numpy as np

PRESETS = {
    # Official WanModel constructor arguments (wan/configs).
    "t2v-1.3B": dict(model_type="t2v", dim=1536, ffn_dim=8960, num_heads=12, num_layers=30, in_dim=16),
    "t2v-14B": dict(model_type="t2v", dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=16),
    "i2v-14B": dict(model_type="i2v", dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=36),
}
COMMON = dict(patch_size=(1, 2, 2), text_len=512, freq_dim=256, text_dim=4096, out_dim=16, qk_norm=True,
              cross_attn_norm=True, eps=1e-6)
CLIP_DIM = 1280


def parameter_shapes(c):
    """Every tensor of the official checkpoint (WanDiTConfig.parameterShapes() in Sources/WanModels/RandomWeights.swift)."""
    d = c["dim"]
    ps = list(c["patch_size"])
    image = c["model_type"] in ("i2v", "flf2v")
    out = [
        ("patch_embedding.weight", [d, c["in_dim"]] + ps), ("patch_embedding.bias", [d]),
        ("text_embedding.0.weight", [d, c["text_dim"]]), ("text_embedding.0.bias", [d]),
        ("text_embedding.2.weight", [d, d]), ("text_embedding.2.bias", [d]),
        ("time_embedding.0.weight", [d, c["freq_dim"]]), ("time_embedding.0.bias", [d]),
        ("time_embedding.2.weight", [d, d]), ("time_embedding.2.bias", [d]),
        ("time_projection.1.weight", [6 * d, d]), ("time_projection.1.bias", [6 * d]),
    ]
    for i in range(c["num_layers"]):
        p = f"blocks.{i}."
        out.append((p + "modulation", [1, 6, d]))
        attn = [f"{a}.{m}" for a in ("self_attn", "cross_attn") for m in ("q", "k", "v", "o")]
        if image:
            attn += ["cross_attn.k_img", "cross_attn.v_img"]
        for a in attn:
            out += [(p + a + ".weight", [d, d]), (p + a + ".bias", [d])]
        if c["qk_norm"]:
            norms = ["self_attn.norm_q", "self_attn.norm_k", "cross_attn.norm_q", "cross_attn.norm_k"]
            if image:
                norms.append("cross_attn.norm_k_img")
            out += [(p + n + ".weight", [d]) for n in norms]
        if c["cross_attn_norm"]:
            out += [(p + "norm3.weight", [d]), (p + "norm3.bias", [d])]
        out += [(p + "ffn.0.weight", [c["ffn_dim"], d]), (p + "ffn.0.bias", [c["ffn_dim"]]),
                (p + "ffn.2.weight", [d, c["ffn_dim"]]), (p + "ffn.2.bias", [d])]
    po = c["out_dim"] * int(np.prod(ps))
    out += [("head.modulation", [1, 2, d]), ("head.head.weight", [po, d]), ("head.head.bias", [po])]
    if image:
        out += [("img_emb.proj.0.weight", [CLIP_DIM]), ("img_emb.proj.0.bias", [CLIP_DIM]),
                ("img_emb.proj.1.weight", [CLIP_DIM, CLIP_DIM]), ("img_emb.proj.1.bias", [CLIP_DIM]),
                ("img_emb.proj.3.weight", [d, CLIP_DIM]), ("img_emb.proj.3.bias", [d]),
                ("img_emb.proj.4.weight", [d]), ("img_emb.proj.4.bias", [d])]
        if c["model_type"] == "flf2v":
            out.append(("img_emb.emb_pos", [1, 514, CLIP_DIM]))
    return out


def is_norm(name, shape):
    return len(shape) == 1 and "norm" in name and name.endswith(".weight") or name in ("img_emb.proj.0.weight", "img_emb.proj.4.weight")


def bound(name, shape):
    """PyTorch-like init range: 1/sqrt(fan_in) for matrices, small for vectors."""
    return 1.0 / np.sqrt(np.prod(shape[1:])) if len(shape) >= 2 else 0.02


def random_f32(rng, name, shape):
    if is_norm(name, shape):
        return np.ones(shape, np.float32)
    b = np.float32(bound(name, shape))
    x = rng.random(shape, dtype=np.float32)
    x *= 2 * b
    x -= b
    return x


def to_bf16_bytes(x):
    u = x.astype(np.float32).view(np.uint32)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16  # round to nearest even
    return u.astype(np.uint16).tobytes()


def f16_bits(v):
    return np.array([v], np.float16).view(np.uint16)[0]


def random_fp8(rng, shape):
    """Random float8_e4m3fn bytes (NaN patterns 0x7F / 0xFF avoided), values up to 448 in magnitude."""
    b = rng.integers(0, 256, size=int(np.prod(shape)), dtype=np.uint8)
    b[(b & 0x7F) == 0x7F] ^= 1
    return b.tobytes()


def random_q4_k(rng, shape, b):
    """Q4_K blocks (256 elements, 144 bytes: f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles);
    values d*sc*q - dmin*m stay within about +-b."""
    n = int(np.prod(shape)) // 256
    blocks = rng.integers(0, 256, size=(n, 144), dtype=np.uint8)
    d = np.float16(2 * b / (63 * 15))
    dmin = np.float16(b / 63)
    blocks[:, 0:2] = np.frombuffer(np.array([d], np.float16).tobytes(), np.uint8)
    blocks[:, 2:4] = np.frombuffer(np.array([dmin], np.float16).tobytes(), np.uint8)
    return blocks.tobytes()


def random_q8_0(rng, shape, b):
    """Q8_0 blocks (32 elements, 34 bytes: f16 d, 32 int8); values d*q within +-b."""
    n = int(np.prod(shape)) // 32
    blocks = rng.integers(0, 256, size=(n, 34), dtype=np.uint8)
    blocks[:, 0:2] = np.frombuffer(np.array([np.float16(b / 127)], np.float16).tobytes(), np.uint8)
    return blocks.tobytes()


# ---------------------------------------------------------------------------------------------------------------- #
# safetensors

def write_safetensors(path, entries):
    """entries: list of (name, dtype string, shape, nbytes, make_bytes())."""
    header, offset = {}, 0
    for name, dtype, shape, nbytes, _ in entries:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt", "note": "random weights (scripts/make-random-dit.py)"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - (8 + len(h)) % 8) % 8)  # data section 8-byte aligned: float32 tensors stay viewable in place
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for name, dtype, shape, nbytes, make in entries:
            data = make()
            assert len(data) == nbytes, (name, len(data), nbytes)
            f.write(data)
    return offset


def safetensors_entries(shapes, fmt, rng):
    entries = []
    for name, shape in shapes:
        n = int(np.prod(shape))
        linear = fmt == "fp8_scaled" and name.endswith(".weight") and len(shape) == 2
        if linear:
            b = bound(name, shape)
            entries.append((name, "F8_E4M3", shape, n, lambda shape=shape: random_fp8(rng, shape)))
            scale = np.float32(b / 448.0)
            entries.append((name[: -len(".weight")] + ".scale_weight", "F32", [], 4, lambda s=scale: np.array(s, np.float32).tobytes()))
        elif fmt == "f32":
            entries.append((name, "F32", shape, 4 * n, lambda name=name, shape=shape: random_f32(rng, name, shape).tobytes()))
        elif fmt == "f16":
            entries.append((name, "F16", shape, 2 * n, lambda name=name, shape=shape: random_f32(rng, name, shape).astype(np.float16).tobytes()))
        else:  # bf16, and the non-Linear tensors of fp8_scaled
            entries.append((name, "BF16", shape, 2 * n, lambda name=name, shape=shape: to_bf16_bytes(random_f32(rng, name, shape))))
    if fmt == "fp8_scaled":
        entries.append(("scaled_fp8", "F8_E4M3", [0], 0, lambda: b""))
    return entries


# ---------------------------------------------------------------------------------------------------------------- #
# GGUF

GGML_F32, GGML_F16, GGML_Q8_0, GGML_Q4_K = 0, 1, 8, 12
TYPE_SIZE = {GGML_F32: (1, 4), GGML_F16: (1, 2), GGML_Q8_0: (32, 34), GGML_Q4_K: (256, 144)}


def gguf_string(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf_kv(key, value):
    if isinstance(value, str):
        return gguf_string(key) + struct.pack("<I", 8) + gguf_string(value)
    return gguf_string(key) + struct.pack("<I", 4) + struct.pack("<I", value)  # uint32


def city96_type(name, shape, quant):
    n = int(np.prod(shape))
    if len(shape) == 1 or n <= 1024 or name.endswith("modulation") or len(shape) > 2:
        return GGML_F32
    block = TYPE_SIZE[quant][0]
    if name.startswith("blocks.") and name.endswith(".weight") and len(shape) == 2 and shape[-1] % block == 0:
        return quant
    return GGML_F16


def write_gguf(path, shapes, quant, rng):
    align = 32
    file_type = {GGML_Q4_K: 15, GGML_Q8_0: 7}[quant]  # LLAMA_FTYPE_MOSTLY_Q4_K_M / Q8_0
    kvs = [gguf_kv("general.architecture", "wan"), gguf_kv("general.file_type", file_type),
           gguf_kv("general.quantization_version", 2)]
    infos, plan, offset = [], [], 0
    for name, shape in shapes:
        t = city96_type(name, shape, quant)
        bs, ts = TYPE_SIZE[t]
        nbytes = int(np.prod(shape)) // bs * ts
        offset = (offset + align - 1) // align * align
        ne = list(reversed(shape))
        infos.append(gguf_string(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
                     + struct.pack("<I", t) + struct.pack("<Q", offset))
        plan.append((name, shape, t, offset, nbytes))
        offset += nbytes
    head = b"GGUF" + struct.pack("<IQQ", 3, len(plan), len(kvs)) + b"".join(kvs) + b"".join(infos)
    head += b"\0" * ((align - len(head) % align) % align)
    with open(path, "wb") as f:
        f.write(head)
        pos = 0
        for name, shape, t, off, nbytes in plan:
            if off > pos:
                f.write(b"\0" * (off - pos))
                pos = off
            if t == GGML_F32:
                data = random_f32(rng, name, shape).tobytes()
            elif t == GGML_F16:
                data = random_f32(rng, name, shape).astype(np.float16).tobytes()
            elif t == GGML_Q4_K:
                data = random_q4_k(rng, shape, bound(name, shape))
            else:
                data = random_q8_0(rng, shape, bound(name, shape))
            assert len(data) == nbytes, (name, len(data), nbytes)
            f.write(data)
            pos += nbytes
    return offset


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="t2v-1.3B", choices=sorted(PRESETS))
    ap.add_argument("--format", required=True, choices=["f32", "f16", "bf16", "fp8_scaled", "q4_k", "q8_0"])
    ap.add_argument("--output", required=True, help="file to write (.safetensors or .gguf)")
    ap.add_argument("--layers", type=int, help="override the preset's layer count (quick experiments)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    c = dict(COMMON, **PRESETS[args.preset])
    if args.layers is not None:
        c["num_layers"] = args.layers
    shapes = parameter_shapes(c)
    params = sum(int(np.prod(s)) for _, s in shapes)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    tmp = args.output + ".partial"
    if args.format in ("q4_k", "q8_0"):
        write_gguf(tmp, shapes, GGML_Q4_K if args.format == "q4_k" else GGML_Q8_0, rng)
    else:
        write_safetensors(tmp, safetensors_entries(shapes, args.format, rng))
    os.replace(tmp, args.output)
    size = os.path.getsize(args.output)
    print(f"{args.output}: {args.preset} ({c['num_layers']} layers, {params / 1e9:.2f}B parameters) as {args.format}, "
          f"{size / 1e9:.2f} GB in {time.time() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
