"""The golden tiny umT5 as a llama.cpp T5 encoder GGUF (the layout of city96's umt5-xxl-encoder-*.gguf that ComfyUI-GGUF
users run with Wan): Tests/Variants/weights/v_t5_gguf.gguf and the case v_weights_t5_gguf.
Matrices in Q8_0 (token_embd, q/k/v/o, ffn_gate/up) and Q4_0 (ffn_down), relative-position tables in F16, norms in
F32; llama.cpp's names (enc.blk.N.attn_q ..., attn_rel_b, ffn_gate = wi_0, ffn_up = wi_1, ffn_down = wo) and metadata
(t5encoder.embedding_length, .feed_forward_length, .block_count, .attention.head_count / key_length /
relative_buckets_count / layer_norm_epsilon). The expected hidden states are the official T5Encoder's with every
tensor replaced by what gguf-py's dequantize gives for the stored blocks.
  WAN21_SRC=CHECKOUT python t5_gguf.py OUT GOLDEN     (needs `pip install gguf`)"""
import sys, json
import numpy as np
import torch
import gguf
from gguf import GGMLQuantizationType as Q
import ref
sys.argv[3:] = ["none"]  # gen.py's groups: none run on import, only its writers are used
from gen import write_case, gold_model, OUT, GOLD

torch.set_grad_enabled(False)
j, sd = gold_model("t5")
cfg = j["config"]
heads = cfg["num_heads"]


def llama_name(k):
    if k == "token_embedding.weight":
        return "token_embd.weight", Q.Q8_0
    if k == "norm.weight":
        return "enc.output_norm.weight", Q.F32
    n, rest = k.split(".", 2)[1:]
    table = {"attn.q.weight": ("attn_q", Q.Q8_0), "attn.k.weight": ("attn_k", Q.Q8_0), "attn.v.weight": ("attn_v", Q.Q8_0),
             "attn.o.weight": ("attn_o", Q.Q8_0), "pos_embedding.embedding.weight": ("attn_rel_b", Q.F16),
             "norm1.weight": ("attn_norm", Q.F32), "norm2.weight": ("ffn_norm", Q.F32),
             "ffn.gate.0.weight": ("ffn_gate", Q.Q8_0), "ffn.fc1.weight": ("ffn_up", Q.Q8_0),
             "ffn.fc2.weight": ("ffn_down", Q.Q4_0)}
    part, qtype = table[rest]
    return f"enc.blk.{n}.{part}.weight", qtype


writer = gguf.GGUFWriter(f"{OUT}/weights/v_t5_gguf.gguf", "t5encoder")
writer.add_context_length(512)
writer.add_embedding_length(cfg["dim"])
writer.add_feed_forward_length(cfg["dim_ffn"])
writer.add_block_count(cfg["num_layers"])
writer.add_head_count(heads)
writer.add_key_length(cfg["dim_attn"] // heads)
writer.add_value_length(cfg["dim_attn"] // heads)
writer.add_layer_norm_eps(1e-6)
writer.add_relative_attn_buckets_count(cfg["num_buckets"])
stored = {}
for k in sorted(sd):
    name, qtype = llama_name(k)
    v = sd[k].float().numpy()
    if qtype == Q.F32:
        writer.add_tensor(name, v.astype(np.float32))
        stored[k] = torch.from_numpy(v.astype(np.float32))
    elif qtype == Q.F16:
        writer.add_tensor(name, v.astype(np.float16))
        stored[k] = torch.from_numpy(v.astype(np.float16).astype(np.float32))
    else:
        raw = gguf.quants.quantize(v, qtype)
        writer.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qtype)
        stored[k] = torch.from_numpy(gguf.quants.dequantize(raw, qtype).astype(np.float32).reshape(v.shape))
writer.write_header_to_file()
writer.write_kv_data_to_file()
writer.write_tensors_to_file()
writer.close()

model = ref.t5.T5Encoder(**cfg).eval()
model.load_state_dict(stored)
g = torch.Generator().manual_seed(51)
lens, L = [23, 9], 23
ids = torch.randint(3, cfg["vocab"], (len(lens), L), generator=g)
mask = torch.zeros(len(lens), L, dtype=torch.int64)
for b, n in enumerate(lens):
    ids[b, n - 1] = 1; ids[b, n:] = 0; mask[b, :n] = 1
out = model(ids, mask)
json.dump({"model": "v_t5_gguf", "class": "T5Encoder", "config": {}, "layout": "gguf", "files": ["v_t5_gguf.gguf"],
           "notes": "the golden t5 as a llama.cpp T5 encoder GGUF (t5encoder metadata, enc.blk.N.* names; Q8_0 / Q4_0 "
                    "matrices, F16 position tables, F32 norms); empty config: the metadata says it"},
          open(f"{OUT}/weights/v_t5_gguf.json", "w"), indent=1)
write_case("v_weights_t5_gguf", "weights", "v_t5_gguf", {"ids": ids, "mask": mask},
           {f"hidden{b}": out[b, :n] for b, n in enumerate(lens)},
           notes="official T5Encoder on the dequantised GGUF tensors (gguf-py)")
