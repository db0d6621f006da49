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
KINDS may also name t5shared (not run by default): the official T5Encoder(shared_pos=True) as a transformers
T5EncoderModel folder (one relative-position table, in block 0) - not a Wan checkpoint, a probe.
Settings the official constructor fixes but its modules take as arguments (T5LayerNorm eps, T5RelativeEmbedding
max_dist) are set on the official modules; the notes say so.

  WAN21_SRC=CHECKOUT python layouts.py OUT GOLDEN SEED COUNT [KINDS]     (KINDS: comma list of t5,clip,vae,dit)
  then: wan conformance OUT
Deterministic for a SEED. Uses the venv of make.sh (torch, transformers 4.x, diffusers 0.33)."""
import sys, os, json, math, random, re
OUT, GOLD, SEED, COUNT = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
KINDS = sys.argv[5].split(",") if len(sys.argv) > 5 else ["t5", "clip", "vae", "dit"]
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
    shape = [xc] + [p * R.randint(1, 4 if j == 0 else 5) + (1 if R.random() < 0.15 else 0) for j, p in enumerate(patch)]
    x = torch.randn(shape, generator=g)
    ctx = torch.randn(R.randint(1, 40), c["text_dim"], generator=g)
    t = torch.tensor([R.choice([0.0, 999.0, round(R.uniform(0, 1000), 3)])])
    tokens = (shape[1] // patch[0]) * (shape[2] // patch[1]) * (shape[3] // patch[2])
    seq_len = tokens + R.choice([0, 0, R.randint(1, 12)])
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


KIND_FUNCS = {"t5": t5, "clip": clip, "vae": vae, "dit": dit, "t5shared": lambda i: t5(i, shared=True)}
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
