"""Variant conformance cases from the official Wan2.1 code (other shapes, seeds and tiny configs than ../shared/golden).
Writes OUT/weights and OUT/cases in the golden format. Usage: python gen.py OUT [GOLDEN]"""
import sys, os, json, math, re
import torch
import torch.nn.functional as F
from safetensors.torch import save_file, load_file
import ref

OUT = sys.argv[1]
GOLD = sys.argv[2]
os.makedirs(OUT + "/weights", exist_ok=True)
os.makedirs(OUT + "/cases", exist_ok=True)
torch.set_grad_enabled(False)


def tol(ref_t, rel=1e-4, k=1e-4):
    return {"rel_l2": rel, "max_abs": max(float(ref_t.abs().max()) * k * 5, 1e-5)}


def write_case(name, component, model, inputs, outputs, config=None, notes="", rel=1e-4):
    tensors, jin, jout = {}, {}, {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor):
            tensors["in." + k] = v.contiguous()
            jin[k] = {"tensor": "in." + k, "shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
        else:
            jin[k] = v
    tols = {}
    for k, v in outputs.items():
        tensors["out." + k] = v.contiguous()
        jout[k] = {"tensor": "out." + k, "shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
        if v.dtype.is_floating_point:
            tols[k] = tol(v, rel)
    first = next(iter(tols.values())) if tols else {"rel_l2": 0, "max_abs": 0}
    case = {"name": name, "component": component, "model": model, "config": config or {}, "inputs": jin,
            "outputs": jout, "tolerance": first, "tolerances": tols, "notes": notes}
    json.dump(case, open(f"{OUT}/cases/{name}.json", "w"), indent=1)
    save_file(tensors, f"{OUT}/cases/{name}.safetensors")
    print("wrote", name, {k: list(v.shape) for k, v in outputs.items()}, flush=True)


def write_model(name, cls, config, sd, layout="official", notes="variant"):
    json.dump({"model": name, "class": cls, "config": config, "layout": layout, "notes": notes},
              open(f"{OUT}/weights/{name}.json", "w"), indent=1)
    save_file({k: v.contiguous() for k, v in sd.items()}, f"{OUT}/weights/{name}.safetensors")


# Official WanModel / VaceWanModel names -> diffusers WanTransformer3DModel / WanVACETransformer3DModel names: diffusers'
# own conversion table (scripts/convert_wan_to_diffusers.py) read as facts. attn1/attn2; norm3 (the cross-attention
# norm) is diffusers' norm2; VACE's before_proj/after_proj are proj_in/proj_out.
DIFFUSERS_BLOCK = [("self_attn.q.", "attn1.to_q."), ("self_attn.k.", "attn1.to_k."), ("self_attn.v.", "attn1.to_v."),
                   ("self_attn.o.", "attn1.to_out.0."), ("self_attn.norm_q.", "attn1.norm_q."), ("self_attn.norm_k.", "attn1.norm_k."),
                   ("cross_attn.q.", "attn2.to_q."), ("cross_attn.k.", "attn2.to_k."), ("cross_attn.v.", "attn2.to_v."),
                   ("cross_attn.o.", "attn2.to_out.0."), ("cross_attn.norm_q.", "attn2.norm_q."), ("cross_attn.norm_k.", "attn2.norm_k."),
                   ("cross_attn.k_img.", "attn2.add_k_proj."), ("cross_attn.v_img.", "attn2.add_v_proj."),
                   ("cross_attn.norm_k_img.", "attn2.norm_added_k."),
                   ("norm3.", "norm2."), ("ffn.0.", "ffn.net.0.proj."), ("ffn.2.", "ffn.net.2."),
                   ("before_proj.", "proj_in."), ("after_proj.", "proj_out.")]
DIFFUSERS_TOP = [("time_embedding.0.", "condition_embedder.time_embedder.linear_1."),
                 ("time_embedding.2.", "condition_embedder.time_embedder.linear_2."),
                 ("time_projection.1.", "condition_embedder.time_proj."),
                 ("text_embedding.0.", "condition_embedder.text_embedder.linear_1."),
                 ("text_embedding.2.", "condition_embedder.text_embedder.linear_2."),
                 ("img_emb.proj.0.", "condition_embedder.image_embedder.norm1."),
                 ("img_emb.proj.1.", "condition_embedder.image_embedder.ff.net.0.proj."),
                 ("img_emb.proj.3.", "condition_embedder.image_embedder.ff.net.2."),
                 ("img_emb.proj.4.", "condition_embedder.image_embedder.norm2."),
                 ("head.head.", "proj_out.")]


def diffusers_dit_name(k):
    if k == "head.modulation":
        return "scale_shift_table"
    if k == "img_emb.emb_pos":
        return "condition_embedder.image_embedder.pos_embed"
    m = re.match(r"((?:vace_)?blocks\.\d+\.)(.*)", k)
    if m:
        head, rest = m.groups()
        if rest == "modulation":
            return head + "scale_shift_table"
        for o, d in DIFFUSERS_BLOCK:
            if rest.startswith(o):
                return head + d + rest[len(o):]
        return k
    for o, d in DIFFUSERS_TOP:
        if k.startswith(o):
            return d + k[len(o):]
    return k


def gold_model(name):
    j = json.load(open(f"{GOLD}/weights/{name}.json"))
    sd = load_file(f"{GOLD}/weights/{name}.safetensors")
    return j, sd


def randomize(m, seed):
    g = torch.Generator().manual_seed(seed)
    for n, p in m.state_dict().items():
        if p.dtype.is_floating_point:
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 / math.sqrt(max(p.shape[-1], 1)) if p.dim() > 1 else 0.1)
                    + (1.0 if n.endswith("norm_q.weight") or n.endswith("norm_k.weight") or "norm3.weight" in n else 0.0))
        if "modulation" in n:
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def which():
    return set(sys.argv[3].split(",")) if len(sys.argv) > 3 else None


ONLY = which()


def want(group):
    return ONLY is None or group in ONLY


# ---------------------------------------------------------------- DiT
def dit_model(name, config, seed):
    m = ref.model.WanModel(**config).eval()
    randomize(m, seed)
    sd = {k: v for k, v in m.state_dict().items() if k != "freqs"}
    write_model(name, "WanModel", config, sd)
    return m


def dit_case(name, m, model_name, seed, shape, t, ctx_len, text_dim, seq_pad=0, y_ch=None, clip_n=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    ctx = torch.randn(ctx_len, text_dim, generator=g)
    tokens = shape[1] * (shape[2] // 2) * (shape[3] // 2)
    seq_len = tokens + seq_pad
    inputs = {"x": x, "t": torch.tensor([t], dtype=torch.float32), "context": ctx, "seq_len": seq_len}
    kw = {}
    if y_ch:
        y = torch.randn([y_ch] + list(shape[1:]), generator=g)
        clip_fea = torch.randn(clip_n, 257, 1280, generator=g)
        inputs = {"x": x, "y": y, "clip_fea": clip_fea, "t": inputs["t"], "context": ctx, "seq_len": seq_len}
        kw = {"clip_fea": clip_fea, "y": [y]}
    out = m(x=[x], t=inputs["t"], context=[ctx], seq_len=seq_len, **kw)[0]
    outputs = {"y": out}
    if y_ch:
        cc = m.img_emb(clip_fea)[0]
        outputs = {"out": out, "context_clip": cc}
    write_case(name, "dit", model_name, inputs, outputs, notes=f"variant of dit cases, seq_len {seq_len}")


if want("dit"):
    # head_dim 64 (rope split 24/20/20), 3 layers, text_dim 48
    c1 = dict(model_type="t2v", patch_size=[1, 2, 2], text_len=512, in_dim=16, dim=128, ffn_dim=256, freq_dim=256,
              text_dim=48, out_dim=16, num_heads=2, num_layers=3, window_size=[-1, -1], qk_norm=True,
              cross_attn_norm=True, eps=1e-6)
    m1 = dit_model("v_dit_h64", c1, 101)
    dit_case("v_dit_h64_grid4x5x7", m1, "v_dit_h64", 1, [16, 4, 10, 14], 500.0, 19, 48)
    dit_case("v_dit_h64_padded", m1, "v_dit_h64", 2, [16, 1, 6, 6], 999.0, 1, 48, seq_pad=7)
    # head_dim 24 (rope 8/8/8), no qk norm, no cross-attn norm, freq_dim 64
    c2 = dict(c1, dim=72, ffn_dim=160, freq_dim=64, text_dim=32, num_heads=3, num_layers=2, qk_norm=False,
              cross_attn_norm=False)
    m2 = dit_model("v_dit_h24_nonorm", c2, 102)
    dit_case("v_dit_h24_nonorm", m2, "v_dit_h24_nonorm", 3, [16, 2, 4, 10], 0.0, 30, 32)
    # golden dit_t2v weights, other shapes
    j, sd = gold_model("dit_t2v")
    mg = ref.model.WanModel(**j["config"]).eval(); mg.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    dit_case("v_dit_t2v_tall", mg, "dit_t2v", 4, [16, 6, 12, 4], 123.456, 40, 32)
    dit_case("v_dit_t2v_pad13", mg, "dit_t2v", 5, [16, 1, 2, 2], 1.0, 512, 32, seq_pad=13)
    # odd latent sides: the stride-2 patch embedding drops the last row / column, y is [16, 3, 6, 8]
    dit_case("v_dit_t2v_odd_latent", mg, "dit_t2v", 10, [16, 3, 7, 9], 300.0, 5, 32)
    # i2v / flf2v golden weights
    j, sd = gold_model("dit_i2v")
    mi = ref.model.WanModel(**j["config"]).eval(); mi.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    dit_case("v_dit_i2v_odd", mi, "dit_i2v", 6, [16, 5, 6, 10], 731.0, 3, 32, seq_pad=5, y_ch=20, clip_n=1)
    j, sd = gold_model("dit_flf2v")
    sd2 = {}
    for f in j.get("files", []):
        sd2.update(load_file(f"{GOLD}/weights/{f}"))
    mf = ref.model.WanModel(**j["config"]).eval(); mf.load_state_dict({k: v.float() for k, v in sd2.items()}, strict=False)
    dit_case("v_dit_flf2v_odd", mf, "dit_flf2v", 7, [16, 2, 4, 8], 260.0, 11, 32, y_ch=20, clip_n=2)

if want("dit_trace"):
    # Per-stage tensors of every block (not only block 0's attention / FFN outputs), 3 layers, through forward hooks
    # on the official modules, as dit_t2v_intermediates records them; seq_len = the token count.
    c3 = dict(model_type="t2v", patch_size=[1, 2, 2], text_len=512, in_dim=16, dim=64,
              ffn_dim=96, freq_dim=256, text_dim=24, out_dim=16, num_heads=2, num_layers=3, window_size=[-1, -1],
              qk_norm=True, cross_attn_norm=True, eps=1e-6)
    m3 = dit_model("v_dit_trace3", c3, 106)
    g = torch.Generator().manual_seed(13)
    x = torch.randn(16, 2, 6, 8, generator=g); ctx = torch.randn(10, 24, generator=g); tt = torch.tensor([421.0])
    seen = {}
    hooks = []
    for i, blk in enumerate(m3.blocks):
        for part in ("self_attn", "cross_attn", "ffn"):
            hooks.append(getattr(blk, part).register_forward_hook(
                lambda mod, inp, out, key=f"block{i}_{part}": seen.__setitem__(key, out[0].clone())))
        hooks.append(blk.register_forward_hook(lambda mod, inp, out, key=f"block{i}_out": seen.__setitem__(key, out[0].clone())))
    y = m3(x=[x], t=tt, context=[ctx], seq_len=24)[0]
    for h in hooks:
        h.remove()
    write_case("v_dit_trace3", "dit", "v_dit_trace3", {"x": x, "t": tt, "context": ctx, "seq_len": 24},
               dict(sorted(seen.items()), y=y), notes="block{i}_self_attn / _cross_attn / _ffn: the module outputs (after the o "
               "projection, before the gate; the FFN before its gate); block{i}_out: the block output; all [24, 64]")

def vace_variant(name, arch, model_seed, data_seed, grid, ctx_len, t, pad, scale):
    """A tiny VaceWanModel (2 heads, qk norm; `arch` gives the rest) of random weights and one forward of it."""
    cv = dict(model_type="vace", patch_size=[1, 2, 2], text_len=512, in_dim=16, out_dim=16, num_heads=2,
              window_size=[-1, -1], qk_norm=True, eps=1e-6, **arch)
    m = ref.vace_model.VaceWanModel(**cv).eval()
    randomize(m, model_seed)
    write_model(name, "VaceWanModel", cv, {k: v for k, v in m.state_dict().items() if k != "freqs"})
    g = torch.Generator().manual_seed(data_seed)
    x = torch.randn([16] + grid, generator=g); vc = torch.randn([cv["vace_in_dim"]] + grid, generator=g)
    ctx = torch.randn(ctx_len, cv["text_dim"], generator=g); tt = torch.tensor([t])
    seq_len = grid[0] * (grid[1] // 2) * (grid[2] // 2) + pad
    y = m(x=[x], t=tt, vace_context=[vc], context=[ctx], seq_len=seq_len, vace_context_scale=scale)[0]
    write_case(name, "dit", name, {"x": x, "vace_context": vc, "t": tt, "context": ctx, "seq_len": seq_len,
                                   "vace_context_scale": scale}, {"y": y})


if want("vace"):
    # 3 main blocks with hints after blocks 0 and 2, vace_in_dim 48, head_dim 32
    vace_variant("v_dit_vace_l02", dict(vace_layers=[0, 2], vace_in_dim=48, dim=64, ffn_dim=128, freq_dim=256, text_dim=32,
                                        num_layers=3, cross_attn_norm=True), 103, 11, [2, 6, 4], 9, 640.0, 3, 0.8)
    j, sd = gold_model("dit_vace")
    mv = ref.vace_model.VaceWanModel(**j["config"]).eval()
    mv.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    for name, seed, shape, scale, pad, t in [("v_dit_vace_a", 8, [16, 3, 4, 6], 0.7, 0, 415.0),
                                              ("v_dit_vace_b", 9, [16, 1, 10, 2], 1.3, 9, 999.0)]:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(shape, generator=g)
        vc = torch.randn([96] + shape[1:], generator=g)
        ctx = torch.randn(8, 32, generator=g)
        tt = torch.tensor([t])
        seq_len = shape[1] * shape[2] // 2 * shape[3] // 2 + pad
        y = mv(x=[x], t=tt, vace_context=[vc], context=[ctx], seq_len=seq_len, vace_context_scale=scale)[0]
        write_case(name, "dit", "dit_vace", {"x": x, "vace_context": vc, "t": tt, "context": ctx, "seq_len": seq_len,
                                             "vace_context_scale": scale}, {"y": y})

if want("vace_l013"):
    # vace_layers [0, 1, 3] of 4 layers: the count of vace blocks (3) does not settle them, the config does.
    vace_variant("v_dit_vace_l013", dict(vace_layers=[0, 1, 3], vace_in_dim=16, dim=48, ffn_dim=64, freq_dim=64, text_dim=24,
                                         num_layers=4, cross_attn_norm=False), 105, 12, [2, 4, 6], 7, 333.0, 2, 1.1)

# ---------------------------------------------------------------- VAE
if want("vae"):
    j, sd = gold_model("vae")
    c = dict(j["config"]); mean = torch.tensor(c.pop("latent_mean")); std = torch.tensor(c.pop("latent_std"))
    mvae = ref.vae.WanVAE_(**c).eval(); mvae.load_state_dict(sd)
    scale = [mean, 1.0 / std]
    g = torch.Generator().manual_seed(20)
    for name, shape in [("v_vae_encode_5f", [3, 5, 24, 40]), ("v_vae_encode_1f", [3, 1, 16, 24]),
                        ("v_vae_encode_17f", [3, 17, 16, 16]), ("v_vae_encode_6f", [3, 6, 16, 16]),
                        ("v_vae_encode_3f", [3, 3, 16, 16]), ("v_vae_encode_8f", [3, 8, 16, 24]),
                        ("v_vae_encode_36x40", [3, 5, 36, 40]), ("v_vae_encode_20x12", [3, 1, 20, 12])]:
        v = torch.rand(shape, generator=g) * 2 - 1
        z = mvae.encode(v.unsqueeze(0), scale).float().squeeze(0)
        write_case(name, "vae", "vae", {"video": v}, {"latent": z})
    for name, shape in [("v_vae_decode_1l", [16, 1, 3, 5]), ("v_vae_decode_4l", [16, 4, 5, 3]),
                        ("v_vae_decode_2l", [16, 2, 2, 2])]:
        z = torch.randn(shape, generator=g)
        v = mvae.decode(z.unsqueeze(0), scale).float().clamp_(-1, 1).squeeze(0)
        write_case(name, "vae", "vae", {"latent": z}, {"video": v})

if want("vae_t2"):
    # A VAE that compresses time by 2 (temperal_downsample [False, False, True]): the official encoder still reads
    # chunks of 4 frames (2 latent frames each), so 7 frames encode the first 5 into 3 latent frames.
    j, sd = gold_model("vae")
    c = dict(j["config"], dim=4, dim_mult=[1, 1, 2, 2], num_res_blocks=1, temperal_downsample=[False, False, True])
    mean = torch.tensor(c["latent_mean"]); std = torch.tensor(c["latent_std"])
    mt = ref.vae.WanVAE_(**{k: v for k, v in c.items() if k not in ("latent_mean", "latent_std")}).eval()
    randomize(mt, 104)
    write_model("v_vae_t2", "WanVAE_", c, mt.state_dict())
    g = torch.Generator().manual_seed(21)
    v = torch.rand([3, 7, 24, 16], generator=g) * 2 - 1
    write_case("v_vae_t2_encode_7f", "vae", "v_vae_t2", {"video": v},
               {"latent": mt.encode(v.unsqueeze(0), [mean, 1.0 / std]).float().squeeze(0)})
    z = torch.randn([16, 3, 3, 2], generator=g)
    write_case("v_vae_t2_decode_3l", "vae", "v_vae_t2", {"latent": z},
               {"video": mt.decode(z.unsqueeze(0), [mean, 1.0 / std]).float().clamp_(-1, 1).squeeze(0)})

# ---------------------------------------------------------------- T5
if want("t5"):
    j, sd = gold_model("t5")
    mt = ref.t5.T5Encoder(**j["config"]).eval(); mt.load_state_dict(sd)
    g = torch.Generator().manual_seed(30)
    for name, lens, L in [("v_t5_three", [1, 33, 17], 40), ("v_t5_300", [300], 300), ("v_t5_full", [64, 64], 64)]:
        ids = torch.randint(3, j["config"]["vocab"], (len(lens), L), generator=g)
        mask = torch.zeros(len(lens), L, dtype=torch.int64)
        for b, n in enumerate(lens):
            ids[b, n - 1] = 1; ids[b, n:] = 0; mask[b, :n] = 1
        out = mt(ids, mask)
        write_case(name, "t5", "t5", {"ids": ids, "mask": mask},
                   {f"hidden{b}": out[b, :n] for b, n in enumerate(lens)})

# ---------------------------------------------------------------- CLIP
if want("clip"):
    j, sd = gold_model("clip_visual")
    mc = ref.clip.VisionTransformer(**j["config"]).eval(); mc.load_state_dict(sd)
    
    g = torch.Generator().manual_seed(40)
    for name, hw in [("v_clip_small", (50, 70)), ("v_clip_exact", (224, 224)), ("v_clip_big", (300, 200))]:
        img = torch.rand(3, 1, *hw, generator=g) * 2 - 1
        v = F.interpolate(img.transpose(0, 1), size=(224, 224), mode="bicubic", align_corners=False)
        v = v.mul(0.5).add(0.5)
        mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
        stdv = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
        v = (v - mean) / stdv
        out = mc(v, use_31_block=True)
        write_case(name, "clip", "clip_visual", {"image": img}, {"features": out})
