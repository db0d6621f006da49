"""A random sweep of `weights` cases through third-party folder layouts whose model JSON has an EMPTY `config`, so the
implementation must take every setting from the folder's own config.json (the golden set's model JSONs also carry
the official config, which masks a wrong translation):
  t5    transformers `UMT5EncoderModel` folder (config.json + model.safetensors): random d_model, d_kv (d_kv*heads
        need not be d_model), d_ff, heads, layers, vocab, relative_attention_num_buckets / _max_distance,
        layer_norm_epsilon (gated-gelu);
  clip  transformers `CLIPVisionModel` folder: random image_size, patch_size, hidden_size, heads, layers,
        intermediate_size (any, not only a multiple of hidden_size), hidden_act gelu / quick_gelu, layer_norm_eps;
  vae   diffusers `AutoencoderKLWan` folder (vae/): random base_dim, z_dim, dim_mult, num_res_blocks,
        temperal_downsample, latents_mean / latents_std; encode or decode cases;
  dit   diffusers `WanTransformer3DModel` folder (transformer/): t2v, i2v (image_dim 1280, added_kv_proj_dim) and
        flf2v (pos_embed_seq_len 514); random heads, head dim, ffn, layers, text_dim, freq_dim, eps, cross_attn_norm,
        qk_norm.
Every expected output comes from the OFFICIAL Wan2.1 module (wan/modules/t5.py T5Encoder, clip.py VisionTransformer,
vae.py WanVAE_, model.py WanModel); its weights are converted by name into the third-party model, and that model's
own output must agree with the official one before a case is written (flf2v: diffusers 0.33 has no pos_embed, so the
image embedder with pos_embed is checked by hand and the rest of the model as i2v on the same weights).
Layout variations on top: storage in float32 / bfloat16 / float16 (the official weights rounded to it first),
sharded saves (shards + index, small max_shard_size), a pipeline root holding text_encoder/ / image_encoder/, the model
JSON naming the root (vae/, transformer/ below it) or the single .safetensors file inside the folder (config.json
beside it); CLIPVisionModelWithProjection and whole CLIPModel folders besides CLIPVisionModel.
DiT single files and Wan-AI folders (model JSON config: only num_heads and eps, plus vace_layers where the count of
vace blocks does not settle them; everything else inferred from the shapes or read from the folder's config.json);
random tiny WanModel t2v / i2v / flf2v and VaceWanModel (vace_layers, vace_in_dim), heads, head dim, ffn, layers,
text_dim, freq_dim, eps, qk_norm, cross_attn_norm; the expected outputs come from the official model loaded with exactly
the values the files store:
  ditfile  official names in one .safetensors (f32 / f16 / bf16), plain or under `model.diffusion_model.` /
           `diffusion_model.`; or a Wan-AI folder: config.json (ModelMixin's: no patch_size, text_dim, qk_norm,
           cross_attn_norm) + diffusion_pytorch_model.safetensors or shards + index (model JSON: the folder, the index,
           or the weight file inside it);
  ditfp8   Linear weights (the blocks', or every 2-D weight) in float8: plain e4m3fn / e5m2 without scale, or ComfyUI
           fp8_scaled (e4m3fn + scale_weight [] or [1], `scaled_fp8` marker, sometimes scale_input); other tensors
           f16 / bf16 / f32;
  ditgguf  GGUF as city96's tools write Wan DiTs (general.architecture wan; blocks' Linear weights Q8_0 / Q4_0 / Q4_1
           / Q5_0 / Q5_1 via gguf.quants, or K-quants Q2_K..Q6_K as valid blocks of random bytes since gguf.quants cannot
           quantise them, mixes per file, F16 fallback for rows that are not whole blocks; F16 / BF16 files; F32 5-D
           patch embeddings with all 5 dims; sometimes convert.py's shape_fix reshape with comfy.gguf.orig_shape).
KINDS may also name t5shared (not run by default): the official T5Encoder(shared_pos=True) as a transformers
T5EncoderModel folder (one relative-position table, in block 0) - not a Wan checkpoint, a probe.
Settings the official constructor fixes but its modules take as arguments (T5LayerNorm eps, T5RelativeEmbedding
max_dist) are set on the official modules; the notes say so.

  WAN21_SRC=CHECKOUT python layouts.py OUT GOLDEN SEED COUNT [KINDS]     (KINDS: comma list of t5,clip,vae,dit,ditfile,ditfp8,ditgguf)
  then: wan conformance OUT
Deterministic for a SEED. Uses the venv of make.sh (torch, transformers 4.x, diffusers 0.33)."""
import sys, os, json, math, random, re
OUT, GOLD, SEED, COUNT = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
KINDS = sys.argv[5].split(",") if len(sys.argv) > 5 else ["t5", "clip", "vae", "dit", "ditfile", "ditfp8", "ditgguf"]
sys.argv = [sys.argv[0], OUT, GOLD, "none"]  # gen.py: helpers only
import torch
import torch.nn.functional as F
import ref
from gen import write_case, randomize, gold_model, diffusers_dit_name

torch.set_grad_enabled(False)
R = random.Random(SEED)
os.makedirs(OUT + "/cases", exist_ok=True)
os.makedirs(OUT + "/weights", exist_ok=True)


def rel_l2(a, b):
    return float((a.float() - b.float()).norm() / max(float(b.float().norm()), 1e-30))


def write_folder_model(name, cls, layout, files, notes, folder=None):
    """The model JSON of a folder layout with an empty config: everything must come from the folder's config.json.
    Sometimes (one weight file only) the JSON names the .safetensors file inside the folder instead, as a user passing
    the file would: its config.json beside it is then all there is."""
    if folder is not None:
        st = [f for f in os.listdir(folder) if f.endswith(".safetensors")]
        if len(st) == 1 and R.random() < 0.25:
            files = [os.path.relpath(os.path.join(folder, st[0]), OUT + "/weights")]
            notes += f"; files: the weight file {files[0]} (config.json beside it)"
    json.dump({"model": name, "class": cls, "config": {}, "layout": layout, "files": files, "notes": notes},
              open(f"{OUT}/weights/{name}.json", "w"), indent=1)


def storage():
    """A random storage dtype and whether to shard (save_pretrained with a small max_shard_size: shards + index, as
    the Wan-AI diffusers folders' text_encoder/ and transformer/ are)."""
    return R.choice([torch.float32] * 4 + [torch.bfloat16, torch.float16]), R.random() < 0.3


def round_to(m, dtype):
    """The official model's weights rounded to the storage dtype: the expected outputs come from the stored values."""
    for p in m.state_dict().values():
        if p.dtype.is_floating_point:
            p.copy_(p.to(dtype).float())


def save(model, folder, dtype, shard):
    total = sum(p.numel() for p in model.state_dict().values()) * torch.finfo(dtype).bits // 8
    kw = {"max_shard_size": max(total // R.choice([2, 3, 5]), 1024)} if shard else {}
    model.to(dtype).save_pretrained(folder, safe_serialization=True, **kw)
    model.float()
    files = sorted(os.listdir(folder))
    return f"{str(dtype).replace('torch.', '')}, {'sharded ' + str(len([f for f in files if f.endswith('.safetensors')])) + ' files' if shard else 'one file'}"


# ---------------------------------------------------------------- umT5
def t5(i, shared=False):
    """shared=True: the official T5Encoder(shared_pos=True) (one relative-position table for all layers, T5 v1.1) as a
    transformers T5EncoderModel folder (model_type t5: the table only in block 0) - not a Wan checkpoint; a probe."""
    from transformers import UMT5Config, UMT5EncoderModel, T5Config, T5EncoderModel
    heads = R.choice([1, 2, 3, 4, 6])
    d_model = R.choice([16, 24, 32, 40, 48, 64])
    d_kv = R.choice([4, 8, 12, 16, 20, 32])
    d_ff = R.choice([8, 24, 50, 64, 96, 130])
    layers = R.choice([1, 2, 3])
    vocab = R.choice([64, 300, 512])
    buckets = R.choice([6, 8, 10, 16, 32, 32, 64])
    # The official T5Encoder fixes max_dist 128 and eps 1e-6; its T5RelativeEmbedding / T5LayerNorm take them as
    # arguments, so other values are set on those modules (as a config.json with them describes).
    max_dist = R.choice([128, 128, 128, 16, 20, 64, 100, 256])
    eps = R.choice([1e-6, 1e-6, 1e-5, 1e-3, 1e-2])
    if max_dist <= buckets // 4:
        max_dist = 128
    c = dict(vocab=vocab, dim=d_model, dim_attn=heads * d_kv, dim_ffn=d_ff, num_heads=heads, num_layers=layers,
             num_buckets=buckets, shared_pos=shared, dropout=0.0)
    name = f"l{SEED}_t5{'shared' if shared else ''}_{i}"
    m = ref.t5.T5Encoder(**c).eval()
    for mod in m.modules():
        if isinstance(mod, ref.t5.T5LayerNorm):
            mod.eps = eps
        if isinstance(mod, ref.t5.T5RelativeEmbedding):
            mod.max_dist = max_dist
    g = torch.Generator().manual_seed(SEED * 1000 + i)
    for p in m.parameters():
        p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 0.1) + (1.0 if p.dim() == 1 else 0.0))
    dtype, shard = storage()
    round_to(m, dtype)
    hc = (T5Config if shared else UMT5Config)(vocab_size=vocab, d_model=d_model, d_kv=d_kv, d_ff=d_ff, num_layers=layers, num_decoder_layers=layers,
                    num_heads=heads, relative_attention_num_buckets=buckets, relative_attention_max_distance=max_dist,
                    dropout_rate=0.0, layer_norm_epsilon=eps, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
                    use_cache=False, tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    hm = (T5EncoderModel if shared else UMT5EncoderModel)(hc).eval()
    sd = {}
    for k, v in m.state_dict().items():
        if k == "token_embedding.weight":
            sd["shared.weight"] = v; sd["encoder.embed_tokens.weight"] = v; continue
        if k == "norm.weight":
            sd["encoder.final_layer_norm.weight"] = v; continue
        if k == "pos_embedding.embedding.weight":  # shared_pos: T5 keeps the one table in block 0
            sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = v; continue
        mm = re.match(r"blocks\.(\d+)\.(.*)", k)
        n, rest = mm.groups()
        b = f"encoder.block.{n}.layer."
        sd[b + {"norm1.weight": "0.layer_norm.weight", "attn.q.weight": "0.SelfAttention.q.weight",
                "attn.k.weight": "0.SelfAttention.k.weight", "attn.v.weight": "0.SelfAttention.v.weight",
                "attn.o.weight": "0.SelfAttention.o.weight",
                "pos_embedding.embedding.weight": "0.SelfAttention.relative_attention_bias.weight",
                "norm2.weight": "1.layer_norm.weight", "ffn.gate.0.weight": "1.DenseReluDense.wi_0.weight",
                "ffn.fc1.weight": "1.DenseReluDense.wi_1.weight", "ffn.fc2.weight": "1.DenseReluDense.wo.weight"}[rest]] = v
    missing, unexpected = hm.load_state_dict(sd, strict=False)
    assert not unexpected and not [k for k in missing if "embed_tokens" not in k], (missing, unexpected)
    L = R.choice([R.randint(1, 20), R.randint(20, 200)])
    lens = [R.randint(1, L) for _ in range(R.choice([1, 2, 3]))]
    lens[0] = L
    pad = R.choice([0, 0, R.randint(1, 10)])
    ids = torch.randint(3, vocab, (len(lens), L + pad), generator=g)
    mask = torch.zeros(len(lens), L + pad, dtype=torch.int64)
    for b, n in enumerate(lens):
        ids[b, n - 1] = 1; ids[b, n:] = 0; mask[b, :n] = 1
    out = m(ids, mask)
    hout = hm(input_ids=ids, attention_mask=mask).last_hidden_state
    worst = max(rel_l2(hout[b, :n], out[b, :n]) for b, n in enumerate(lens))
    assert worst < 1e-5, f"transformers UMT5EncoderModel disagrees with the official T5Encoder: rel_l2 {worst}"
    sub = R.random() < 0.3  # a diffusers pipeline root holding text_encoder/ (as Wan-AI's Diffusers repos)
    folder = f"{OUT}/weights/{name}" + ("/text_encoder" if sub else "")
    stored = save(hm, folder, dtype, shard)
    desc = (f"{stored}{', in text_encoder/' if sub else ''}; d_model {d_model}, d_kv {d_kv} x {heads} heads (dim_attn {heads * d_kv}), d_ff {d_ff}, {layers} layers, "
            f"vocab {vocab}, buckets {buckets}, max_distance {max_dist}, eps {eps}")
    write_folder_model(name, "UMT5EncoderModel", "hf-transformers", [name + "/"],
                       f"transformers {'T5EncoderModel (shared_pos)' if shared else 'UMT5EncoderModel'} folder, empty config: {desc}",
                       folder=folder)
    write_case(name, "weights", name, {"ids": ids, "mask": mask},
               {f"hidden{b}": out[b, :n] for b, n in enumerate(lens)},
               notes=f"official T5Encoder ({desc}; eps / max_dist set on its T5LayerNorm / T5RelativeEmbedding "
                     f"modules) through the HF layout; transformers agrees (rel_l2 {worst:.2e})")


# ---------------------------------------------------------------- CLIP vision
def clip(i):
    from transformers import CLIPVisionConfig, CLIPVisionModel
    heads = R.choice([1, 2, 3, 4])
    hd = R.choice([8, 12, 14, 16, 24])
    dim = heads * hd
    patch = R.choice([2, 4, 7, 8, 14, 16])
    grid = R.choice([2, 3, 4, 5, 8])
    image_size = patch * grid + (R.choice([1, patch // 2]) if R.random() < 0.1 else 0)  # rarely not a multiple
    inter = R.choice([dim * 4, dim * 2, R.randint(8, 200), R.randint(8, 200)])
    if R.random() < 0.15:
        # widths of 64-wide heads whose intermediate_size / hidden_size ratio does not survive a float round trip
        # (int(hidden * (inter / hidden)) == inter - 1): 7 or 11 heads of 64
        heads, hd = R.choice([(7, 64), (11, 64)])
        dim = heads * hd
        inter = R.choice({448: [976, 1840, 1952], 704: [480, 960, 1568, 1920]}[dim])
    layers = R.choice([1, 2, 3, 4])
    act = R.choice(["gelu", "gelu", "quick_gelu"])
    eps = R.choice([1e-5, 1e-5, 1e-6, 1e-3])
    proj = R.choice([16, 32, 48])
    # official: int(dim * mlp_ratio) must be exactly `inter`
    ratio = (inter + 0.5) / dim
    assert int(dim * ratio) == inter
    c = dict(image_size=image_size, patch_size=patch, dim=dim, mlp_ratio=ratio, out_dim=proj, num_heads=heads,
             num_layers=layers, pool_type="token", pre_norm=True, post_norm=False, activation=act, attn_dropout=0.0,
             proj_dropout=0.0, embedding_dropout=0.0, norm_eps=eps)
    name = f"l{SEED}_clip_{i}"
    import io, contextlib
    with contextlib.redirect_stdout(io.StringIO()):
        m = ref.clip.VisionTransformer(**c).eval()
    g = torch.Generator().manual_seed(SEED * 1000 + i)
    for n, p in m.state_dict().items():
        p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 0.1) + (1.0 if n.endswith("weight") and p.dim() == 1 else 0.0))
    dtype, shard = storage()
    round_to(m, dtype)
    hc = CLIPVisionConfig(hidden_size=dim, intermediate_size=inter, projection_dim=proj, num_hidden_layers=layers,
                          num_attention_heads=heads, num_channels=3, image_size=image_size, patch_size=patch,
                          hidden_act=act, layer_norm_eps=eps, attention_dropout=0.0)
    # ComfyUI's clip_vision_h holds visual_projection.weight too: CLIPVisionModelWithProjection (the official `head`
    # [dim, out_dim] transposed); its output is not part of Wan's features
    # or a whole CLIPModel (text tower too; config.json nests vision_config, projection_dim at the top)
    variant = R.choice(["CLIPVisionModel", "CLIPVisionModel", "CLIPVisionModelWithProjection", "CLIPModel"])
    with_proj = variant != "CLIPVisionModel"
    if variant == "CLIPVisionModelWithProjection":
        from transformers import CLIPVisionModelWithProjection
        hm = CLIPVisionModelWithProjection(hc).eval()
    elif variant == "CLIPModel":
        from transformers import CLIPConfig, CLIPModel
        tc = dict(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  max_position_embeddings=16)
        hm = CLIPModel(CLIPConfig(text_config=tc, vision_config=hc.to_dict(), projection_dim=proj)).eval()
    else:
        hm = CLIPVisionModel(hc).eval()
    sd = {}
    V = "vision_model."
    for k, v in m.state_dict().items():
        if k == "patch_embedding.weight": sd[V + "embeddings.patch_embedding.weight"] = v
        elif k == "cls_embedding": sd[V + "embeddings.class_embedding"] = v.reshape(dim)
        elif k == "pos_embedding": sd[V + "embeddings.position_embedding.weight"] = v[0]
        elif k.startswith("pre_norm."): sd[V + "pre_layrnorm." + k[9:]] = v
        elif k.startswith("post_norm."): sd[V + "post_layernorm." + k[10:]] = v
        elif k == "head":
            if with_proj:
                sd["visual_projection.weight"] = v.t().contiguous()
            continue  # CLIPVisionModel has no projection
        else:
            n, rest = re.match(r"transformer\.(\d+)\.(.*)", k).groups()
            b = f"{V}encoder.layers.{n}."
            if rest.startswith("attn.to_qkv."):
                leaf = rest.split(".")[-1]
                q, kk, vv = v.chunk(3, dim=0)
                sd[b + f"self_attn.q_proj.{leaf}"] = q; sd[b + f"self_attn.k_proj.{leaf}"] = kk
                sd[b + f"self_attn.v_proj.{leaf}"] = vv
            else:
                leaf = rest.split(".")[-1]
                mod = {"attn.proj": "self_attn.out_proj", "norm1": "layer_norm1", "norm2": "layer_norm2",
                       "mlp.0": "mlp.fc1", "mlp.2": "mlp.fc2"}[rest.rsplit(".", 1)[0]]
                sd[b + f"{mod}.{leaf}"] = v
    missing, unexpected = hm.load_state_dict(sd, strict=False)
    assert not unexpected and not [k for k in missing if "position_ids" not in k and not k.startswith("text_")
                                   and k != "logit_scale"], (missing, unexpected)
    img = torch.rand(3, 1, R.randint(10, 300), R.randint(10, 300), generator=g) * 2 - 1
    s = image_size
    v = F.interpolate(img.transpose(0, 1), size=(s, s), mode="bicubic", align_corners=False).mul(0.5).add(0.5)
    v = (v - torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)) / torch.tensor(
        [0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    feats = m(v, use_31_block=True)
    hf = (hm.vision_model if with_proj else hm)(pixel_values=v, output_hidden_states=True).hidden_states[-2]
    r = rel_l2(hf, feats)
    assert r < 1e-5, f"transformers CLIPVisionModel disagrees with the official VisionTransformer: rel_l2 {r}"
    sub = R.random() < 0.3  # a diffusers pipeline root holding image_encoder/ (as Wan-AI's I2V Diffusers repos)
    folder = f"{OUT}/weights/{name}" + ("/image_encoder" if sub else "")
    stored = save(hm, folder, dtype, shard)
    desc = (f"{stored}{', in image_encoder/' if sub else ''}; {variant}, image_size {image_size}, patch {patch}, "
            f"hidden {dim} = {heads} heads of {hd}, intermediate {inter}, {layers} layers, {act}, eps {eps}, projection_dim {proj}")
    write_folder_model(name, "CLIPVisionModel", "hf-transformers", [name + "/"],
                       f"transformers {variant} folder, empty config: {desc}", folder=folder)
    write_case(name, "weights", name, {"image": img}, {"features": feats},
               notes=f"official VisionTransformer ({desc}) through the HF layout; transformers hidden_states[-2] "
                     f"agrees (rel_l2 {r:.2e})")


# ---------------------------------------------------------------- Wan-VAE
RES = {"residual.0.": "norm1.", "residual.2.": "conv1.", "residual.3.": "norm2.", "residual.6.": "conv2.",
       "shortcut.": "conv_shortcut."}


def vae_diffusers_names(sd, dim_mult, num_res_blocks):
    """official WanVAE_ names -> diffusers AutoencoderKLWan names, from the two module trees (not from WanKit)."""
    def res(prefix, rest):
        for o, d in RES.items():
            if rest.startswith(o):
                return prefix + d + rest[len(o):]
        return prefix + rest  # a Resample (resample.1 / time_conv) or an AttentionBlock keeps its inner names
    # flat index of decoder.upsamples -> (block, "resnets.j" | "upsamplers.0")
    up, n = {}, 0
    for b in range(len(dim_mult)):
        for j in range(num_res_blocks + 1):
            up[n] = f"up_blocks.{b}.resnets.{j}."; n += 1
        if b != len(dim_mult) - 1:
            up[n] = f"up_blocks.{b}.upsamplers.0."; n += 1
    out = {}
    for k, v in sd.items():
        if k.startswith("conv1."): out["quant_conv." + k[6:]] = v; continue
        if k.startswith("conv2."): out["post_quant_conv." + k[6:]] = v; continue
        coder, rest = k.split(".", 1)
        if rest.startswith("conv1."): nk = "conv_in." + rest[6:]
        elif rest.startswith("head.0."): nk = "norm_out." + rest[7:]
        elif rest.startswith("head.2."): nk = "conv_out." + rest[7:]
        elif rest.startswith("middle."):
            i, r = rest[7:].split(".", 1)
            nk = "mid_block.attentions.0." + r if i == "1" else res(f"mid_block.resnets.{0 if i == '0' else 1}.", r)
        elif rest.startswith("downsamples."):
            i, r = rest[12:].split(".", 1)
            nk = res(f"down_blocks.{i}.", r)
        elif rest.startswith("upsamples."):
            i, r = rest[10:].split(".", 1)
            nk = res(up[int(i)], r)
        else:
            raise KeyError(k)
        out[coder + "." + nk] = v
    return out


def vae(i):
    from diffusers import AutoencoderKLWan
    base = R.choice([4, 6, 8, 8, 12])
    z = R.choice([16, 16, 16, 4, 8, 12])
    dim_mult = R.choice([[1, 2, 4, 4], [1, 2, 4, 4], [1, 1, 2, 2], [2, 2, 1, 4], [1, 2, 2], [1, 3, 2], [2, 1], [1, 2, 3, 4]])
    nrb = R.choice([0, 1, 2, 2, 3])
    stages = len(dim_mult) - 1
    td = [R.random() < 0.5 for _ in range(stages)]
    if R.random() < 0.4 and stages == 3:
        td = [False, True, True]
    g = torch.Generator().manual_seed(SEED * 1000 + i)
    if z == 16 and R.random() < 0.5:
        j, _ = gold_model("vae")
        mean, std = list(j["config"]["latent_mean"]), list(j["config"]["latent_std"])
    else:
        mean = [round(float(x), 4) for x in torch.randn(z, generator=g)]
        std = [round(float(x), 4) for x in torch.rand(z, generator=g) * 2.5 + 0.5]
    c = dict(dim=base, z_dim=z, dim_mult=dim_mult, num_res_blocks=nrb, attn_scales=[], temperal_downsample=td, dropout=0.0)
    name = f"l{SEED}_vae_{i}"
    m = ref.vae.WanVAE_(**c).eval()
    for n, p in m.state_dict().items():
        if p.dtype.is_floating_point:
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 / math.sqrt(max(p[0].numel(), 1)) if p.dim() > 1 else 0.1)
                    + (1.0 if n.endswith("gamma") else 0.0))
    dtype, shard = storage()
    round_to(m, dtype)
    dm = AutoencoderKLWan(base_dim=base, z_dim=z, dim_mult=dim_mult, num_res_blocks=nrb, attn_scales=[],
                          temperal_downsample=td, dropout=0.0, latents_mean=mean, latents_std=std).eval()
    dm.load_state_dict(vae_diffusers_names(m.state_dict(), dim_mult, nrb), strict=True)
    meant, stdt = torch.tensor(mean), torch.tensor(std)
    scale = [meant, 1.0 / stdt]
    sf, tf = 2 ** stages, 2 ** sum(td)
    if R.random() < 0.5:
        v = torch.rand([3, R.choice([1, 2, 5, 7, 9, 13]), R.randint(sf, 5 * sf), R.randint(sf, 5 * sf)], generator=g) * 2 - 1
        out = m.encode(v.unsqueeze(0), scale).float().squeeze(0)
        mu = dm.encode(v.unsqueeze(0)).latent_dist.mode()[0]
        check = rel_l2((mu - meant.view(-1, 1, 1, 1)) / stdt.view(-1, 1, 1, 1), out)
        inputs, outputs, what = {"video": v}, {"latent": out}, "encode (normalised mean)"
    else:
        zz = torch.randn([z, R.randint(1, 4), R.randint(1, 6), R.randint(1, 6)], generator=g)
        out = m.decode(zz.unsqueeze(0), scale).float().clamp_(-1, 1).squeeze(0)
        dec = dm.decode((zz * stdt.view(-1, 1, 1, 1) + meant.view(-1, 1, 1, 1)).unsqueeze(0)).sample[0]
        check = rel_l2(dec, out)
        inputs, outputs, what = {"latent": zz}, {"video": out}, "decode (de-normalised latent)"
    assert check < 1e-5, f"diffusers AutoencoderKLWan disagrees with the official WanVAE_: rel_l2 {check}"
    stored = save(dm, f"{OUT}/weights/{name}/vae", dtype, shard)
    desc = f"{stored}; base_dim {base}, z_dim {z}, dim_mult {dim_mult}, num_res_blocks {nrb}, temperal_downsample {td}"
    root = R.random() < 0.3  # the model JSON names the pipeline root instead of vae/
    desc += ", files: the root" if root else ""
    write_folder_model(name, "AutoencoderKLWan", "diffusers", [name + ("/" if root else "/vae/")],
                       f"diffusers AutoencoderKLWan folder, empty config (latents_mean/std in config.json): {desc}",
                       folder=None if root else f"{OUT}/weights/{name}/vae")
    write_case(name, "weights", name, inputs, outputs,
               notes=f"official WanVAE_ {what} ({desc}, latent mean/std of the config.json) through the diffusers "
                     f"folder; diffusers agrees (rel_l2 {check:.2e})")


# ---------------------------------------------------------------- DiT
def random_dit_inputs(g, patch, channels, text_dim):
    """A latent of random grid (sometimes a side one past a patch multiple), a context, a timestep, the token count
    and seq_len (sometimes padded) for a DiT case."""
    shape = [channels] + [p * R.randint(1, 4 if j == 0 else 5) + (1 if R.random() < 0.15 else 0) for j, p in enumerate(patch)]
    x = torch.randn(shape, generator=g)
    ctx = torch.randn(R.randint(1, 40), text_dim, generator=g)
    t = torch.tensor([R.choice([0.0, 999.0, round(R.uniform(0, 1000), 3)])])
    tokens = (shape[1] // patch[0]) * (shape[2] // patch[1]) * (shape[3] // patch[2])
    seq_len = tokens + R.choice([0, 0, R.randint(1, 12)])
    return shape, x, ctx, t, tokens, seq_len


def dit(i):
    from diffusers import WanTransformer3DModel
    from safetensors.torch import load_file, save_file
    heads = R.choice([1, 2, 3, 4])
    head_dim = R.choice([8, 12, 16, 20, 24, 30, 32, 40, 64])
    kind = R.choice(["t2v", "t2v", "i2v", "flf2v"])
    i2v = kind != "t2v"
    patch = [1, 2, 2] if R.random() < 0.8 else R.choice([[1, 1, 1], [2, 2, 2], [1, 4, 4], [1, 2, 1]])
    in_dim = 36 if i2v else R.choice([16, 16, 16, 32, 48])  # t2v-style models with extra input channels (control)
    c = dict(model_type=kind, patch_size=patch, text_len=512, in_dim=in_dim,
             dim=heads * head_dim, ffn_dim=R.choice([16, 48, 100, 256]), freq_dim=R.choice([32, 64, 100, 256]),
             text_dim=R.choice([8, 32, 40, 72]), out_dim=R.choice([16, 16, 16, 8, 12]), num_heads=heads, num_layers=R.choice([1, 2, 3]),
             window_size=[-1, -1], qk_norm=R.random() < 0.6, cross_attn_norm=R.random() < 0.6,
             eps=R.choice([1e-6, 1e-6, 1e-5, 1e-3]))
    name = f"l{SEED}_dit_{i}"
    m = ref.model.WanModel(**c).eval()
    randomize(m, SEED * 1000 + i)
    g = torch.Generator().manual_seed(SEED * 1000 + i)
    sd = {k: v for k, v in m.state_dict().items() if k != "freqs"}
    if kind == "flf2v":
        sd["img_emb.emb_pos"] = torch.randn(sd["img_emb.emb_pos"].shape, generator=g) * 0.2
        m.img_emb.emb_pos.copy_(sd["img_emb.emb_pos"])
    dtype, shard = storage()
    round_to(m, dtype)
    sd = {k: v for k, v in m.state_dict().items() if k != "freqs"}
    dkw = dict(patch_size=tuple(patch), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=c["in_dim"],
               out_channels=c["out_dim"], text_dim=c["text_dim"], freq_dim=c["freq_dim"], ffn_dim=c["ffn_dim"],
               num_layers=c["num_layers"], cross_attn_norm=c["cross_attn_norm"],
               qk_norm="rms_norm_across_heads" if c["qk_norm"] else None, eps=c["eps"],
               image_dim=1280 if i2v else None, added_kv_proj_dim=c["dim"] if i2v else None)
    dm = WanTransformer3DModel(**dkw).eval()
    renamed = {diffusers_dit_name(k): v for k, v in sd.items() if k != "img_emb.emb_pos"}
    own = dm.state_dict()
    for k in own:
        renamed[k] = renamed[k].reshape(own[k].shape)
    dm.load_state_dict(renamed, strict=True)
    if i2v and not c["qk_norm"]:
        # diffusers 0.33 calls norm_added_k even when it is None (no qk_norm); later versions skip it
        for blk in dm.blocks:
            blk.attn2.norm_added_k = torch.nn.Identity()
    xc = 16 if i2v else in_dim
    shape, x, ctx, t, tokens, seq_len = random_dit_inputs(g, patch, xc, c["text_dim"])
    inputs = {"x": x, "t": t, "context": ctx, "seq_len": seq_len}
    kw, dkw2 = {}, {}
    if i2v:
        y = torch.randn([20] + shape[1:], generator=g)
        clip_fea = torch.randn(2 if kind == "flf2v" else 1, 257, 1280, generator=g)
        inputs = {"x": x, "y": y, "clip_fea": clip_fea, "t": t, "context": ctx, "seq_len": seq_len}
        kw = {"clip_fea": clip_fea, "y": [y]}
    out = m(x=[x], t=t, context=[ctx], seq_len=seq_len, **kw)[0]
    # diffusers on the same weights (flf2v: as i2v without emb_pos, diffusers 0.33 has no pos_embed)
    ctx512 = torch.cat([ctx, ctx.new_zeros(512 - ctx.shape[0], ctx.shape[1])])
    if kind == "flf2v":
        mi = ref.model.WanModel(**dict(c, model_type="i2v")).eval()
        mi.load_state_dict({k: v for k, v in sd.items() if k != "img_emb.emb_pos"}, strict=False)
        cf1 = clip_fea[:1]
        want = mi(x=[x], t=t, context=[ctx], seq_len=tokens, clip_fea=cf1, y=[y])[0]
        got = dm(hidden_states=torch.cat([x, y])[None], timestep=t, encoder_hidden_states=ctx512[None],
                 encoder_hidden_states_image=cf1, return_dict=False)[0][0]
        # newer diffusers' WanImageEmbedding with pos_embed: view [1, 514, 1280], add pos_embed, then the MLP
        ie = dm.condition_embedder.image_embedder
        emb = ie(clip_fea.reshape(1, 514, 1280) + sd["img_emb.emb_pos"])
        r2 = rel_l2(emb, m.img_emb(clip_fea))
        assert r2 < 1e-5, f"image embedder with pos_embed disagrees: {r2}"
    else:
        want = out if seq_len == tokens else m(x=[x], t=t, context=[ctx], seq_len=tokens, **kw)[0]
        extra = {"encoder_hidden_states_image": clip_fea} if i2v else {}
        hs = torch.cat([x, y])[None] if i2v else x[None]
        got = dm(hidden_states=hs, timestep=t, encoder_hidden_states=ctx512[None], return_dict=False, **extra)[0][0]
    check = rel_l2(got, want)
    assert check < 1e-4, f"diffusers WanTransformer3DModel disagrees with the official WanModel: rel_l2 {check}"
    folder = f"{OUT}/weights/{name}/transformer"
    stored = save(dm, folder, dtype, shard)
    cfg_path = folder + "/config.json"
    cj = json.load(open(cfg_path))
    cj["pos_embed_seq_len"] = 514 if kind == "flf2v" else None  # as diffusers >= 0.34 writes it
    json.dump(cj, open(cfg_path, "w"), indent=2, sort_keys=True)
    if kind == "flf2v":
        pe = sd["img_emb.emb_pos"].to(dtype).contiguous()
        index = folder + "/diffusion_pytorch_model.safetensors.index.json"
        if os.path.exists(index):
            ij = json.load(open(index))
            last = sorted(set(ij["weight_map"].values()))[-1]
            ij["weight_map"]["condition_embedder.image_embedder.pos_embed"] = last
            ij["metadata"]["total_size"] += pe.numel() * pe.element_size()
            json.dump(ij, open(index, "w"), indent=2, sort_keys=True)
            wpath = folder + "/" + last
        else:
            wpath = folder + "/diffusion_pytorch_model.safetensors"
        w = load_file(wpath)
        w["condition_embedder.image_embedder.pos_embed"] = pe
        save_file(w, wpath, metadata={"format": "pt"})
    outputs = {"y": out}
    if i2v:
        outputs = {"out": out, "context_clip": m.img_emb(clip_fea)[0]}
    desc = (f"{stored}; {kind}, patch {patch}, in {c['in_dim']}, out {c['out_dim']}, {heads} heads of {head_dim}, ffn {c['ffn_dim']}, {c['num_layers']} layers, text_dim {c['text_dim']}, "
            f"freq_dim {c['freq_dim']}, eps {c['eps']}, qk_norm {c['qk_norm']}, cross_attn_norm {c['cross_attn_norm']}")
    root = R.random() < 0.3  # the model JSON names the pipeline root instead of transformer/
    desc += ", files: the root" if root else ""
    write_folder_model(name, "WanTransformer3DModel", "diffusers", [name + ("/" if root else "/transformer/")],
                       f"diffusers WanTransformer3DModel folder, empty config: {desc}", folder=None if root else folder)
    write_case(name, "weights", name, inputs, outputs,
               notes=f"official WanModel ({desc}), seq_len {seq_len} ({tokens} tokens), through the diffusers folder; "
                     f"diffusers agrees (rel_l2 {check:.2e}{' as i2v; pos_embed checked on the image embedder' if kind == 'flf2v' else ''})")


# ---------------------------------------------------------------- DiT single files: ditfile, ditfp8, ditgguf
F8 = {"e4m3fn": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


def dit_build(i, tag, rows=None):
    """A random tiny official WanModel (t2v / i2v / flf2v) or VaceWanModel of random weights. rows: None (any widths),
    32 (dim and most ffn_dim multiples of 32: legacy GGUF blocks), 256 (dim multiple of 256: K-quant super-blocks)."""
    kind = R.choice(["t2v", "t2v", "i2v", "flf2v", "vace"])
    if rows is None:
        heads, head_dim = R.choice([1, 2, 3, 4]), R.choice([8, 12, 16, 20, 24, 30, 32, 40, 64])
        ffn = R.choice([16, 48, 100, 256, 96])
    elif rows == 32:
        while True:
            heads, head_dim = R.choice([1, 2, 3, 4]), R.choice([16, 32, 48, 64, 96])
            if heads * head_dim % 32 == 0 and heads * head_dim >= 64:  # q/k/v/o above the 1024-element F32 threshold
                break
        ffn = R.choice([32, 64, 96, 128, 192, 256, 320]) if R.random() < 0.85 else R.choice([48, 100])
    else:
        dim = R.choice([256, 256, 512])
        heads = R.choice([1, 2, 4, 8] if dim == 256 else [2, 4, 8])
        head_dim = dim // heads
        ffn = R.choice([256, 512, 768]) if R.random() < 0.85 else R.choice([160, 320])
    patch = [1, 2, 2] if R.random() < 0.85 else R.choice([[1, 1, 1], [2, 2, 2], [1, 4, 4], [1, 2, 1]])
    i2v = kind in ("i2v", "flf2v")
    layers = R.choice([1, 2, 3, 4, 5] if kind == "vace" else [1, 2, 3])
    c = dict(model_type=kind, patch_size=patch, text_len=512, in_dim=36 if i2v else (16 if kind == "vace" else R.choice([16, 16, 16, 32, 48])),
             dim=heads * head_dim, ffn_dim=ffn, freq_dim=R.choice([32, 64, 100, 256]), text_dim=R.choice([8, 32, 40, 72]),
             out_dim=R.choice([16, 16, 16, 8, 12]), num_heads=heads, num_layers=layers, window_size=[-1, -1],
             qk_norm=R.random() < 0.6, cross_attn_norm=R.random() < 0.6, eps=R.choice([1e-6, 1e-6, 1e-5, 1e-3]))
    cfg = {"num_heads": heads, "eps": c["eps"]}
    if kind == "vace":
        vl = R.choice(["every2", "first", "all", "random", "random", "random"])
        if vl == "every2":
            c["vace_layers"] = list(range(0, layers, 2))
        elif vl == "first":
            c["vace_layers"] = [0]
        elif vl == "all":
            c["vace_layers"] = list(range(layers))
        else:
            c["vace_layers"] = [0] + sorted(R.sample(range(1, layers), R.randint(0, layers - 1))) if layers > 1 else [0]
        c["vace_in_dim"] = R.choice([96, 96, 16, 32, 48])
        # what the count of vace blocks settles (evenly spaced from 0, or every second layer); else the config says
        n, L = len(c["vace_layers"]), layers
        settled = list(range(0, L, L // n)) if L % n == 0 else (list(range(0, L, 2)) if (L + 1) // 2 == n else None)
        if settled != c["vace_layers"]:
            cfg["vace_layers"] = c["vace_layers"]
        m = ref.vace_model.VaceWanModel(**c).eval()
    else:
        m = ref.model.WanModel(**c).eval()
    randomize(m, SEED * 1000 + i)
    g = torch.Generator().manual_seed(SEED * 1000 + i)
    if kind == "flf2v":
        m.img_emb.emb_pos.copy_(torch.randn(m.img_emb.emb_pos.shape, generator=g) * 0.2)
    sd = {k: v.clone() for k, v in m.state_dict().items() if k != "freqs"}
    desc = (f"{kind}, patch {patch}, in {c['in_dim']}, out {c['out_dim']}, {heads} heads of {head_dim}, ffn {ffn}, {layers} layers, "
            f"text_dim {c['text_dim']}, freq_dim {c['freq_dim']}, eps {c['eps']}, qk_norm {c['qk_norm']}, cross_attn_norm {c['cross_attn_norm']}"
            + (f", vace_layers {c['vace_layers']}, vace_in_dim {c['vace_in_dim']}" if kind == "vace" else ""))
    return dict(kind=kind, c=c, m=m, sd=sd, g=g, cfg=cfg, desc=desc, name=f"l{SEED}_{tag}_{i}",
                cls="VaceWanModel" if kind == "vace" else "WanModel")


def dit_case(b, stored, how):
    """Loads the stored values (float32, exactly what the files hold) into the official model, runs it on random
    inputs shaped like the golden dit_*_basic / dit_vace_basic cases and writes the case."""
    m, c, g, kind = b["m"], b["c"], b["g"], b["kind"]
    own = m.state_dict()
    assert set(stored) == {k for k in own if k != "freqs"}, set(stored) ^ set(own)
    for k, v in stored.items():
        assert v.dtype == torch.float32 and list(v.shape) == list(own[k].shape), (k, v.dtype, v.shape, own[k].shape)
    m.load_state_dict(stored, strict=False)
    patch = c["patch_size"]
    i2v = kind in ("i2v", "flf2v")
    xc = 16 if i2v else c["in_dim"]
    shape, x, ctx, t, tokens, seq_len = random_dit_inputs(g, patch, xc, c["text_dim"])
    if kind == "vace":
        vc = torch.randn([c["vace_in_dim"]] + shape[1:], generator=g)
        scale = R.choice([1.0, 1.0, 0.5, round(R.uniform(0.2, 1.6), 3)])
        inputs = {"x": x, "vace_context": vc, "t": t, "context": ctx, "seq_len": seq_len, "vace_context_scale": scale}
        outputs = {"y": m(x=[x], t=t, vace_context=[vc], context=[ctx], seq_len=seq_len, vace_context_scale=scale)[0]}
    elif i2v:
        y = torch.randn([20] + shape[1:], generator=g)
        clip_fea = torch.randn(2 if kind == "flf2v" else 1, 257, 1280, generator=g)
        inputs = {"x": x, "y": y, "clip_fea": clip_fea, "t": t, "context": ctx, "seq_len": seq_len}
        outputs = {"out": m(x=[x], t=t, context=[ctx], seq_len=seq_len, clip_fea=clip_fea, y=[y])[0],
                   "context_clip": m.img_emb(clip_fea)[0]}
    else:
        inputs = {"x": x, "t": t, "context": ctx, "seq_len": seq_len}
        outputs = {"y": m(x=[x], t=t, context=[ctx], seq_len=seq_len)[0]}
    for k, v in outputs.items():
        assert torch.isfinite(v).all(), f"non-finite official output {k}"
    write_case(b["name"], "weights", b["name"], inputs, outputs,
               notes=f"official {b['cls']} ({b['desc']}), seq_len {seq_len} ({tokens} tokens), on the values stored by {how}")


def write_file_model(b, layout, files, config, notes):
    json.dump({"model": b["name"], "class": b["cls"], "config": config, "layout": layout, "files": files, "notes": notes},
              open(f"{OUT}/weights/{b['name']}.json", "w"), indent=1)


def save_sd(sd, path):
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in sd.items()}, path, metadata={"format": "pt"})


def ditfile(i):
    """Official names in one .safetensors (f32 / f16 / bf16), plain or under ComfyUI's `model.diffusion_model.` /
    `diffusion_model.` prefix; or a Wan-AI folder: config.json (official constructor arguments, as ModelMixin writes
    them: no patch_size / text_dim / qk_norm / cross_attn_norm / window_size) + diffusion_pytorch_model.safetensors, or
    shards + index."""
    b = dit_build(i, "ditfile")
    dtype = R.choice([torch.float32, torch.float32, torch.float16, torch.bfloat16])
    stored = {k: v.to(dtype).float() for k, v in b["sd"].items()}
    form = R.choice(["file", "file", "model.diffusion_model.", "diffusion_model.", "sharded", "sharded", "folder"])
    name, dn = b["name"], str(dtype).replace("torch.", "")
    if form in ("sharded", "folder"):
        m = b["m"]
        m.load_state_dict(stored, strict=False)
        folder = f"{OUT}/weights/{name}"
        total = sum(v.numel() for v in stored.values()) * torch.finfo(dtype).bits // 8
        kw = {"max_shard_size": max(total // R.choice([2, 3, 5]), 1024)} if form == "sharded" else {}
        m.to(dtype).save_pretrained(folder, safe_serialization=True, **kw)
        m.float()
        files = sorted(os.listdir(folder))
        shards = [f for f in files if f.endswith(".safetensors")]
        cj = json.load(open(folder + "/config.json"))
        assert not {"patch_size", "text_dim", "qk_norm", "cross_attn_norm"} & set(cj), cj
        # Wan-AI's config.json: the constructor arguments less WanModel.ignore_for_config. diffusers 0.33.1 records
        # VaceWanModel's wrongly (its positional super().__init__ call shifts the values: text_len [1, 2, 2], ...),
        # so the file is written here as Wan-AI's Wan2.1-VACE-14B config.json reads.
        want = {k: v for k, v in b["c"].items() if k not in type(m).ignore_for_config}
        if {k: v for k, v in cj.items() if not k.startswith("_")} != want:
            assert b["kind"] == "vace", (cj, want)
            cj = {k: v for k, v in cj.items() if k.startswith("_")}
            cj.update(want)
            json.dump(cj, open(folder + "/config.json", "w"), indent=2, sort_keys=True)
        layout = "official-sharded" if form == "sharded" else "official"
        config, target = {}, [name + "/"]
        what = f"Wan-AI folder ({len(shards)} shard{'s' if len(shards) > 1 else ''}{' + index' if form == 'sharded' else ''} + config.json with {sorted(k for k in cj if not k.startswith('_'))})"
        r = R.random()
        if form == "sharded" and r < 0.25:
            target = [f"{name}/diffusion_pytorch_model.safetensors.index.json"]
            what += "; files: the index"
        elif form == "folder" and r < 0.3:
            target = [f"{name}/{shards[0]}"]
            if R.random() < 0.5:
                config = dict(b["cfg"])
                what += "; files: the weight file (config.json beside it); config: num_heads, eps"
            else:  # a user passing Wan2.1-T2V-1.3B/diffusion_pytorch_model.safetensors: config.json beside it is all there is
                what += "; files: the weight file, empty config (config.json beside it)"
    else:
        prefix = "" if form == "file" else form
        save_sd({prefix + k: v.to(dtype) for k, v in b["sd"].items()}, f"{OUT}/weights/{name}.safetensors")
        layout = "comfy-prefix" if prefix else "official"
        target, config = [name + ".safetensors"], dict(b["cfg"])
        what = f"one .safetensors, official names{' under ' + repr(prefix) if prefix else ''}"
    how = f"{what}, {dn}"
    write_file_model(b, layout, target, config, f"{how}; model: {b['desc']}; config holds only what shapes cannot show")
    dit_case(b, stored, how)


def ditfp8(i):
    """Linear weights in float8: plain (Kijai-style, e4m3fn or e5m2, no scale) or ComfyUI fp8_scaled (e4m3fn +
    per-tensor `<m>.scale_weight` [] or [1], a `scaled_fp8` marker, sometimes `<m>.scale_input`)."""
    b = dit_build(i, "ditfp8")
    scaled = R.random() < 0.5
    f8name = "e4m3fn" if scaled or R.random() < 0.75 else "e5m2"
    f8 = F8[f8name]
    scope = R.choice(["blocks", "blocks", "all"])  # the blocks' Linear weights, or every 2-D weight
    other = torch.bfloat16 if scaled and R.random() < 0.7 else R.choice([torch.float16, torch.bfloat16, torch.float32])
    prefix = R.choice(["", "", "model.diffusion_model."])
    scale_shape = R.choice([[], [1]])
    with_input = scaled and R.random() < 0.3
    out, stored = {}, {}
    nf8 = 0
    for k, v in b["sd"].items():
        lin = v.dim() == 2 and k.endswith(".weight") and (scope == "all" or k.startswith(("blocks.", "vace_blocks.")))
        if not lin:
            out[prefix + k] = v.to(other)
            stored[k] = v.to(other).float()
            continue
        nf8 += 1
        if scaled:
            s = (v.abs().max() / 448.0).float()
            q = (v / s).clamp(-448, 448).to(f8)
            out[prefix + k] = q
            out[prefix + k[:-len("weight")] + "scale_weight"] = s.reshape(scale_shape).clone()
            if with_input:
                out[prefix + k[:-len("weight")] + "scale_input"] = torch.ones(scale_shape)
            stored[k] = q.float() * s
        else:
            q = v.to(f8)
            out[prefix + k] = q
            stored[k] = q.float()
    if scaled:
        out[prefix + "scaled_fp8"] = torch.empty(0, dtype=f8)
    name = b["name"]
    save_sd(out, f"{OUT}/weights/{name}.safetensors")
    on = str(other).replace("torch.", "")
    how = (f"{'ComfyUI fp8_scaled' if scaled else 'plain fp8'} .safetensors: {nf8} Linear weights ({'those in blocks' if scope == 'blocks' else 'every 2-D weight'}) "
           f"float8_{f8name}" + (f" with float32 scale_weight of shape {scale_shape}{' and scale_input' if with_input else ''}, marker '{prefix}scaled_fp8'" if scaled else ", no scale")
           + f"; other tensors {on}{'; prefix ' + repr(prefix) if prefix else ''}")
    layout = "comfy-fp8-scaled" if scaled else ("comfy-prefix" if prefix else "official")
    write_file_model(b, layout, [name + ".safetensors"], dict(b["cfg"]), f"{how}; model: {b['desc']}")
    dit_case(b, stored, how)


KQ = {"Q2_K": (80, 82), "Q3_K": (108, None), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208, None)}  # byte offsets of d, dmin


def kquant_blocks(shape, qt, std, rng):
    """Valid ggml K-quant blocks for a [rows, cols] weight (gguf.quants cannot quantise K types): random quant and
    scale bytes, per-block f16 d (and dmin, set so the mean is ~0) scaled so the values have about `std`."""
    import gguf, numpy as np
    T = getattr(gguf.GGMLQuantizationType, qt)
    _, ts = gguf.GGML_QUANT_SIZES[T]
    rows, cols = shape
    nb = cols // 256
    raw = rng.integers(0, 256, (rows, nb, ts), dtype=np.uint8)
    od, om = KQ[qt]
    u = rng.uniform(0.5, 1.5, (rows, nb)).astype(np.float32)

    def put(raw, o, vals):
        raw = raw.copy()
        raw[:, :, o:o + 2] = vals.astype(np.float16)[..., None].view(np.uint8).reshape(rows, nb, 2)
        return raw

    def deq(raw):
        return gguf.quants.dequantize(raw.reshape(rows, nb * ts), T)

    ratio = 0.0
    if om is not None:
        a = deq(put(put(raw, od, u), om, np.zeros_like(u))).mean()
        bb = deq(put(put(raw, od, np.zeros_like(u)), om, u)).mean()
        ratio = -a / bb
    v = deq(put(put(raw, od, u), om, u * ratio) if om is not None else put(raw, od, u))
    s = std / max(float(v.std()), 1e-12)
    raw = put(raw, od, u * s)
    if om is not None:
        raw = put(raw, om, u * s * ratio)
    raw = raw.reshape(rows, nb * ts)
    return raw, deq(raw)


def ditgguf(i):
    """GGUF as city96's ComfyUI-GGUF tools write Wan DiTs (convert.py + fix_5d_tensors.py + the patched llama-quantize):
    general.architecture 'wan', official names; the Linear weights in blocks.* quantised (fallback F16 where a row is
    not a whole number of blocks); other 2-D+ weights F16 (or BF16 in a BF16 file); 1-D tensors, tensors <= 1024
    elements and *.modulation F32 (from an f32 source; all F16 from an f16 source); 5-D patch embeddings F32 with all 5
    dims, written after their bias."""
    import gguf, numpy as np
    GT = gguf.GGMLQuantizationType
    kq = R.random() < 0.35
    # reshape: convert.py's shape_fix rule (its SD1/SDXL path; ComfyUI-GGUF's loader honours it for every arch): a
    # tensor of >= 512 elements, a multiple of 256, whose last dim is not one, is stored as [n/256, 256] with its
    # shape in comfy.gguf.orig_shape.<name> (INT32 array); K-quants then fit any such tensor. 5-D tensors are then
    # sometimes stored that way too (a converter avoiding fix_5d_tensors.py) instead of with all 5 dims.
    reshape = R.random() < 0.3
    reshape5d = reshape and R.random() < 0.5
    b = dit_build(i, "ditgguf", rows=32 if reshape or not kq else 256)
    rng = np.random.default_rng(SEED * 1000 + i)
    if kq:
        attn_t, ffn_t = R.choice(list(KQ)), R.choice(list(KQ) + ["Q8_0", "Q5_0"])
        fname = {("Q4_K", "Q5_K"): "MOSTLY_Q4_K_M", ("Q4_K", "Q6_K"): "MOSTLY_Q4_K_M", ("Q5_K", "Q6_K"): "MOSTLY_Q5_K_M"}.get(
            (attn_t, ffn_t), {"Q2_K": "MOSTLY_Q2_K", "Q3_K": "MOSTLY_Q3_K_M", "Q4_K": "MOSTLY_Q4_K_S", "Q5_K": "MOSTLY_Q5_K_S", "Q6_K": "MOSTLY_Q6_K"}[attn_t])
    else:
        pick = R.choice(["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "F16", "BF16"])
        attn_t = ffn_t = pick
        if pick in ("Q4_0", "Q5_0") and R.random() < 0.3:
            ffn_t = "Q8_0"  # a mixed file
        fname = "MOSTLY_" + pick
    src = R.choice(["f32", "f32", "f16"]) if fname != "MOSTLY_BF16" else "bf16"
    big = "BF16" if fname == "MOSTLY_BF16" else "F16"
    name = b["name"]
    w = gguf.GGUFWriter(f"{OUT}/weights/{name}.gguf", arch="wan")
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_file_type(getattr(gguf.LlamaFileType, fname))
    stored, types, pending5d, reshaped = {}, {}, {}, []

    def add(k, v):
        a = v.numpy().astype(np.float32)
        n = a.size
        if reshape and v.dim() > 1 and n >= 512 and n % 256 == 0 and a.shape[-1] % 256 != 0 and (v.dim() < 5 or reshape5d):
            a = a.reshape(n // 256, 256)
            w.add_array(f"comfy.gguf.orig_shape.{k}", [int(d) for d in v.shape])
            reshaped.append(k)
        if v.dim() == 5:
            t = "F32" if a.ndim == 5 or R.random() < 0.5 else "F16"
        elif src == "f16":
            t = "F16"
        elif v.dim() == 1 or n <= 1024 or ".modulation" in k or k == "head.modulation":
            t = "F32"
        else:
            t = big
        lin = v.dim() == 2 and k.endswith(".weight") and k.startswith(("blocks.", "vace_blocks.")) and n > 1024
        if lin and fname not in ("MOSTLY_F16", "MOSTLY_BF16"):
            qt = ffn_t if ".ffn." in k else attn_t
            bs = gguf.GGML_QUANT_SIZES[getattr(GT, qt)][0]
            t = qt if a.shape[-1] % bs == 0 else "F16"  # llama-quantize's fallback, forced to F16 by city96's patch
        T = getattr(GT, t)
        if t in KQ:
            std = float(a.std())
            data, deq = kquant_blocks(a.shape, t, std, rng)
        else:
            data = gguf.quants.quantize(a, T)
            deq = gguf.quants.dequantize(data, T)
        stored[k] = torch.from_numpy(np.ascontiguousarray(deq, dtype=np.float32)).reshape(v.shape)
        types[k] = t
        w.add_tensor(k, data, raw_shape=None, raw_dtype=T)

    for k, v in b["sd"].items():
        if v.dim() == 5:
            pending5d[k] = v
            continue
        add(k, v)
        k5 = k.replace(".bias", ".weight")
        if k5 in pending5d:
            add(k5, pending5d.pop(k5))
    for k, v in pending5d.items():
        add(k, v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    # read the file back: the values fed to the official model must be exactly what it stores
    rd = gguf.GGUFReader(f"{OUT}/weights/{name}.gguf")
    seen = set()
    for t in rd.tensors:
        back = gguf.quants.dequantize(t.data, t.tensor_type)
        ref_v = stored[t.name].numpy()
        assert t.tensor_type.name == types[t.name], (t.name, t.tensor_type.name, types[t.name])
        dims = list(reversed([int(d) for d in t.shape]))
        if t.name in reshaped:
            f = rd.get_field(f"comfy.gguf.orig_shape.{t.name}")
            assert [int(f.parts[j][0]) for j in f.data] == list(ref_v.shape) and f.types == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32], t.name
            assert dims == [ref_v.size // 256, 256], (t.name, dims)
        else:
            assert dims == list(ref_v.shape), (t.name, t.shape, ref_v.shape)
        assert np.array_equal(back.reshape(ref_v.shape), ref_v), t.name
        seen.add(t.name)
    assert seen == set(stored)
    counts = {}
    for t in types.values():
        counts[t] = counts.get(t, 0) + 1
    how = (f"GGUF ({fname[7:]}: blocks' attention {attn_t}, ffn {ffn_t}; from an {src} source; tensor types {dict(sorted(counts.items()))}"
           + (f"; {len(reshaped)} tensors stored as [n/256, 256] with comfy.gguf.orig_shape ({', '.join(r for r in reshaped if 'patch_embedding' in r) or 'no 5-D'})" if reshaped else "")
           + ("; K-quant blocks of random bytes with per-block f16 d/dmin, expected from gguf.quants.dequantize" if kq and any(t in KQ for t in types.values()) else "") + ")")
    write_file_model(b, "gguf", [name + ".gguf"], dict(b["cfg"]), f"{how}; model: {b['desc']}")
    dit_case(b, stored, how)

KIND_FUNCS = {"t5": t5, "clip": clip, "vae": vae, "dit": dit, "t5shared": lambda i: t5(i, shared=True),
              "ditfile": ditfile, "ditfp8": ditfp8, "ditgguf": ditgguf}
kinds = [k for k in KINDS]
counts = {}
for i in range(COUNT):
    kind = kinds[i % len(kinds)]
    try:
        KIND_FUNCS[kind](i)
        counts[kind] = counts.get(kind, 0) + 1
    except Exception as e:  # a configuration the official code itself rejects: not a case
        import traceback
        print(f"skipped {kind} {i}: {type(e).__name__}: {e}", flush=True)
        if os.environ.get("LAYOUTS_TRACE"):
            traceback.print_exc()
print("written", counts)
