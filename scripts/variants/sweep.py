"""A random sweep of conformance cases from the official Wan2.1 code: tiny models in random configurations (DiT t2v /
i2v, umT5, Wan-VAE, CLIP), random input shapes, timesteps, lengths and seeds, random scheduler settings and random
Unicode strings, all in the golden format. Not kept in the repository: it is a search for cases that WanKit gets
wrong, beyond the fixed sets (../shared/golden, Tests/Variants), the way a hidden set with other shapes and seeds
would find them.

  WAN21_SRC=CHECKOUT python sweep.py OUT GOLDEN SEED COUNT      (then: wan conformance OUT)
  SWEEP_PIPELINES=1 ...: random text-to-video / text-to-image / image-to-video / first-last-frame / VACE runs of the
  official pipelines instead (the golden pipeline models, and pipe.py's flf2v / VACE ones; random sizes, frame counts,
  steps, solvers, shift, guidance, seeds, prompts, conditioning images and videos, context scales);
  SWEEP_PIPELINES=flf2v,vace (a comma list of t2v, i2v, flf2v, vace): those kinds only.
  SWEEP_KINDS=dit,vae (a comma list of dit, t5, vae, clip, scheduler, strings, vace, batch): those kinds only.

Deterministic for a SEED. Uses the venv of make.sh (torch, diffusers 0.33, transformers 4.x)."""
import sys, os, json, math, random
OUT, GOLD, SEED, COUNT = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sys.argv = [sys.argv[0], OUT, GOLD, "none"]  # gen.py / misc.py: helpers only
import torch
import torch.nn.functional as F
import ref
from gen import write_case, write_model, gold_model, randomize, dit_case
from misc import trajectory
import tok

torch.set_grad_enabled(False)
R = random.Random(SEED)
os.makedirs(OUT + "/cases", exist_ok=True)
# The golden models and tokenizer the cases name, as links.
os.makedirs(OUT + "/weights", exist_ok=True)
for f in os.listdir(GOLD + "/weights"):
    if not os.path.exists(f"{OUT}/weights/{f}"):
        os.symlink(os.path.abspath(f"{GOLD}/weights/{f}"), f"{OUT}/weights/{f}")
if not os.path.exists(OUT + "/tokenizer"):
    os.symlink(os.path.abspath(GOLD + "/tokenizer"), OUT + "/tokenizer")


def dit(i):
    heads = R.choice([1, 2, 3, 4])
    head_dim = R.choice([8, 12, 16, 20, 24, 30, 32, 40, 64])
    kind = R.choice(["t2v", "t2v", "i2v", "flf2v"])
    i2v = kind != "t2v"
    # t2v models of another text_len too (the context is padded to it; i2v's official split assumes 512)
    text_len = 512 if i2v else R.choice([512, 512, 40, 77, 300])
    c = dict(model_type=kind, patch_size=[1, 2, 2], text_len=text_len, in_dim=36 if i2v else 16,
             dim=heads * head_dim, ffn_dim=R.choice([16, 48, 100, 256]), freq_dim=R.choice([32, 64, 256]),
             text_dim=R.choice([8, 32, 40]), out_dim=16, num_heads=heads, num_layers=R.choice([1, 2, 3]),
             window_size=[-1, -1], qk_norm=R.random() < 0.7, cross_attn_norm=R.random() < 0.7,
             eps=R.choice([1e-6, 1e-5]))
    name = f"s{SEED}_dit_{i}"
    m = ref.model.WanModel(**c).eval()
    randomize(m, SEED * 1000 + i)
    sd = {k: v for k, v in m.state_dict().items() if k != "freqs"}
    if kind == "flf2v":
        sd["img_emb.emb_pos"] = torch.randn(sd["img_emb.emb_pos"].shape, generator=torch.Generator().manual_seed(i)) * 0.2
        m.img_emb.emb_pos.copy_(sd["img_emb.emb_pos"])
    write_model(name, "WanModel", c, sd)
    for j in range(R.choice([1, 2])):
        shape = [16, R.randint(1, 5), R.randint(2, 11), R.randint(2, 11)]
        t = R.choice([0.0, 999.0, round(R.uniform(0, 1000), 3)])
        dit_case(f"{name}_{j}", m, name, SEED * 1000 + 10 * i + j, shape, t, R.randint(1, 40), c["text_dim"],
                 seq_pad=R.choice([0, 0, R.randint(1, 20)]), y_ch=20 if i2v else None,
                 clip_n=(2 if kind == "flf2v" else 1) if i2v else None)


def vace(i):
    heads = R.choice([1, 2, 3])
    layers = R.choice([2, 3, 4])
    vl = sorted(R.sample(range(layers), R.randint(1, layers)))
    c = dict(vace_layers=vl, vace_in_dim=R.choice([16, 48, 96]), model_type="vace", patch_size=[1, 2, 2], text_len=512,
             in_dim=16, dim=heads * R.choice([16, 32]), ffn_dim=R.choice([32, 100]), freq_dim=R.choice([64, 256]),
             text_dim=R.choice([16, 32]), out_dim=16, num_heads=heads, num_layers=layers, window_size=[-1, -1],
             qk_norm=R.random() < 0.7, cross_attn_norm=R.random() < 0.7, eps=1e-6)
    name = f"s{SEED}_vace_{i}"
    m = ref.vace_model.VaceWanModel(**c).eval()
    randomize(m, SEED * 1000 + i)
    write_model(name, "VaceWanModel", c, {k: v for k, v in m.state_dict().items() if k != "freqs"})
    g = torch.Generator().manual_seed(SEED * 1000 + i)
    shape = [16, R.randint(1, 3), R.randint(2, 8), R.randint(2, 8)]
    x = torch.randn(shape, generator=g)
    vc = torch.randn([c["vace_in_dim"]] + shape[1:], generator=g)
    ctx = torch.randn(R.randint(1, 20), c["text_dim"], generator=g)
    tt = torch.tensor([round(R.uniform(0, 999), 2)])
    seq_len = shape[1] * (shape[2] // 2) * (shape[3] // 2) + R.choice([0, R.randint(1, 9)])
    scale = round(R.uniform(0, 2), 2)
    y = m(x=[x], t=tt, vace_context=[vc], context=[ctx], seq_len=seq_len, vace_context_scale=scale)[0]
    write_case(name, "dit", name, {"x": x, "vace_context": vc, "t": tt, "context": ctx, "seq_len": seq_len,
                                   "vace_context_scale": scale}, {"y": y})


def batch(i):
    """Several videos of different shapes in one forward (each padded to seq_len, its keys masked), as
    dit_t2v_batch2_mixed; t2v, or i2v with one CLIP feature row per video."""
    heads, hd = R.choice([1, 2, 3]), R.choice([8, 16, 24, 32])
    kind = R.choice(["t2v", "t2v", "i2v"])
    c = dict(model_type=kind, patch_size=[1, 2, 2], text_len=512, in_dim=36 if kind == "i2v" else 16, dim=heads * hd,
             ffn_dim=R.choice([32, 64]), freq_dim=R.choice([64, 256]), text_dim=R.choice([16, 32]), out_dim=16,
             num_heads=heads, num_layers=R.choice([1, 2]), window_size=[-1, -1], qk_norm=R.random() < 0.7,
             cross_attn_norm=R.random() < 0.7, eps=1e-6)
    name = f"s{SEED}_batch_{i}"
    m = ref.model.WanModel(**c).eval()
    randomize(m, SEED * 1000 + i)
    write_model(name, "WanModel", c, {k: v for k, v in m.state_dict().items() if k != "freqs"})
    g = torch.Generator().manual_seed(SEED * 1000 + i)
    B = R.choice([2, 3])
    xs = [torch.randn([16, R.randint(1, 4), 2 * R.randint(1, 5), 2 * R.randint(1, 5)], generator=g) for _ in range(B)]
    ctxs = [torch.randn(R.randint(1, 30), c["text_dim"], generator=g) for _ in range(B)]
    t = torch.tensor([round(R.uniform(0, 999), 1) for _ in range(B)])
    seq_len = max(x.shape[1] * (x.shape[2] // 2) * (x.shape[3] // 2) for x in xs) + R.choice([0, R.randint(1, 7)])
    inputs = {}
    for b in range(B):
        inputs[f"x{b}"], inputs[f"context{b}"] = xs[b], ctxs[b]
    inputs["t"], inputs["seq_len"] = t, seq_len
    kw = {}
    if kind == "i2v":
        ys = [torch.randn([20] + list(x.shape[1:]), generator=g) for x in xs]
        clip_fea = torch.randn(B, 257, 1280, generator=g)
        for b in range(B):
            inputs[f"y{b}"] = ys[b]
        inputs["clip_fea"] = clip_fea
        kw = {"y": ys, "clip_fea": clip_fea}
    outs = m(x=xs, t=t, context=ctxs, seq_len=seq_len, **kw)
    write_case(name, "dit", name, inputs, {f"y{b}": outs[b] for b in range(B)})


def t5(i):
    heads = R.choice([1, 2, 4, 6])
    c = dict(vocab=512, dim=R.choice([16, 32, 48, 64]), dim_attn=heads * R.choice([8, 16]), dim_ffn=R.choice([24, 64, 96]),
             num_heads=heads, num_layers=R.choice([1, 2, 3]), num_buckets=R.choice([8, 32]), shared_pos=False, dropout=0.0)
    name = f"s{SEED}_t5_{i}"
    m = ref.t5.T5Encoder(**c).eval()
    g = torch.Generator().manual_seed(SEED * 1000 + i)
    for p in m.parameters():
        p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 0.1) + (1.0 if p.dim() == 1 else 0.0))
    write_model(name, "T5Encoder", c, m.state_dict())
    L = R.choice([R.randint(1, 20), R.randint(20, 200)])
    lens = [R.randint(1, L) for _ in range(R.choice([1, 2, 3]))]
    lens[0] = L
    ids = torch.randint(3, c["vocab"], (len(lens), L), generator=g)
    mask = torch.zeros(len(lens), L, dtype=torch.int64)
    for b, n in enumerate(lens):
        ids[b, n - 1] = 1; ids[b, n:] = 0; mask[b, :n] = 1
    out = m(ids, mask)
    write_case(name, "t5", name, {"ids": ids, "mask": mask}, {f"hidden{b}": out[b, :n] for b, n in enumerate(lens)})


def vae(i):
    j, sd = gold_model("vae")
    c = dict(j["config"], dim=R.choice([4, 8]), num_res_blocks=R.choice([1, 2]),
             dim_mult=R.choice([[1, 2, 4, 4], [1, 1, 2, 2], [2, 2, 1, 4]]),
             temperal_downsample=R.choice([[False, True, True], [True, True, False], [False, False, True], [False, False, False]]))
    mean = torch.tensor(c["latent_mean"]); std = torch.tensor(c["latent_std"])
    cc = {k: v for k, v in c.items() if k not in ("latent_mean", "latent_std")}
    name = f"s{SEED}_vae_{i}"
    m = ref.vae.WanVAE_(**cc).eval()
    g = torch.Generator().manual_seed(SEED * 1000 + i)
    for n, p in m.state_dict().items():
        if p.dtype.is_floating_point:
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 / math.sqrt(max(p[0].numel(), 1)) if p.dim() > 1 else 0.1)
                    + (1.0 if n.endswith("gamma") else 0.0))
    write_model(name, "WanVAE_", c, m.state_dict())
    scale = [mean, 1.0 / std]
    if R.random() < 0.5:
        v = torch.rand([3, R.choice([1, 2, 5, 7, 9]), R.randint(8, 40), R.randint(8, 40)], generator=g) * 2 - 1
        z = m.encode(v.unsqueeze(0), scale).float().squeeze(0)
        write_case(name, "vae", name, {"video": v}, {"latent": z})
    else:
        z = torch.randn([16, R.randint(1, 4), R.randint(1, 6), R.randint(1, 6)], generator=g)
        v = m.decode(z.unsqueeze(0), scale).float().clamp_(-1, 1).squeeze(0)
        write_case(name, "vae", name, {"latent": z}, {"video": v})


def clip(i):
    patch = R.choice([7, 14, 16])
    heads = R.choice([1, 2, 4])
    c = dict(image_size=patch * R.choice([2, 3, 5, 8]), patch_size=patch, dim=heads * R.choice([8, 16]),
             mlp_ratio=R.choice([2, 4]), out_dim=R.choice([16, 32]), num_heads=heads, num_layers=R.choice([2, 3, 4]),
             pool_type="token", pre_norm=True, post_norm=False, activation="gelu", attn_dropout=0.0, proj_dropout=0.0,
             embedding_dropout=0.0, norm_eps=1e-5)
    name = f"s{SEED}_clip_{i}"
    m = ref.clip.VisionTransformer(**c).eval()
    g = torch.Generator().manual_seed(SEED * 1000 + i)
    for n, p in m.state_dict().items():
        p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 0.1) + (1.0 if n.endswith("weight") and p.dim() == 1 else 0.0))
    write_model(name, "VisionTransformer", c, m.state_dict())
    img = torch.rand(3, 1, R.randint(10, 300), R.randint(10, 300), generator=g) * 2 - 1
    s = c["image_size"]
    v = F.interpolate(img.transpose(0, 1), size=(s, s), mode="bicubic", align_corners=False).mul(0.5).add(0.5)
    v = (v - torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)) / torch.tensor(
        [0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    write_case(name, "clip", name, {"image": img}, {"features": m(v, use_31_block=True)})


def scheduler(i):
    solver = R.choice(["unipc", "dpm++", "euler"])
    trajectory(f"s{SEED}_scheduler_{i}", solver, R.randint(1, 30), round(R.uniform(0.5, 12), 2),
               round(R.uniform(1, 9), 2), R.randint(0, 10 ** 6), R.randint(0, 10 ** 6),
               [16, R.randint(1, 3), R.randint(1, 4), R.randint(1, 4)])


RANGES = [(0x20, 0x7e), (0xa0, 0x24f), (0x370, 0x52f), (0x590, 0x6ff), (0x900, 0xdff), (0x1100, 0x11ff),
          (0x2000, 0x206f), (0x2100, 0x27bf), (0x3000, 0x30ff), (0x4e00, 0x9fff), (0xac00, 0xd7a3), (0xff00, 0xffef),
          (0x1f300, 0x1faff), (0x20000, 0x2a6df), (0x0, 0x1f)]


def strings(i):
    out = []
    for _ in range(R.randint(1, 4)):
        n = R.choice([R.randint(0, 12), R.randint(12, 80), R.randint(300, 700)])
        s = []
        for _ in range(n):
            r = R.random()
            if r < 0.25:
                s.append(" ")
            elif r < 0.3:
                s.append(R.choice(["<pad>", "</s>", "<unk>", "<extra_id_3>", "&amp;", "&lt;", "\u200b", "\u3000", "\t", "\n"]))
            else:
                lo, hi = R.choice(RANGES)
                s.append(chr(R.randint(lo, hi)))
        out.append("".join(s))
    tok.OUT = OUT
    tok.case(f"s{SEED}_tokenizer_{i}", out)


PROMPTS = ["A cat walks on the grass.", "  一只猫在草地上走  ", "Neon city at night, rain, “cinematic”", "x", "Ｆｕｌｌ width ＆ émoji 🐱",
           "A very long prompt " * 40]


PIPELINE_KINDS = os.environ.get("SWEEP_PIPELINES", "1")


def pipeline(i):
    import pipe
    solver = R.choice(["unipc", "dpm++"])
    steps, shift, guide, seed = R.randint(2, 5), round(R.uniform(1, 9), 2), round(R.uniform(1, 8), 2), R.randint(0, 2 ** 31)
    neg = R.choice(["", "", "blurry, 模糊", "low quality"])
    if PIPELINE_KINDS != "1":  # a comma list of t2v, i2v, flf2v, vace: those only
        kind = R.choice(PIPELINE_KINDS.split(","))
        draw = {"t2v": 0.0, "i2v": 0.7, "flf2v": 0.9, "vace": 0.99}[kind]
    else:
        draw = R.random()
    if draw < 0.6:
        frames = R.choice([1, 1 + 4 * R.randint(1, 3)])
        pipe.t2v_case(f"s{SEED}_pipeline_t2v_{i}", R.choice(PROMPTS), [16 * R.randint(1, 6), 16 * R.randint(1, 6)], frames,
                      steps, solver, shift, guide, seed, neg, task="t2i" if frames == 1 else "t2v")
    elif draw < 0.8:
        h, w = R.randint(16, 120), R.randint(16, 120)
        pipe.i2v_case(f"s{SEED}_pipeline_i2v_{i}", R.choice(PROMPTS), (h, w), R.choice([32 * 32, 48 * 64, 40 * 24]),
                      1 + 4 * R.randint(1, 2), steps, solver, shift, guide, seed, neg)
    elif draw < 0.92:
        # first-last frame (81 frames, as the official mask is built): last frames of another size and aspect
        pipe.flf2v_case(f"s{SEED}_pipeline_flf2v_{i}", R.choice(PROMPTS), (R.randint(16, 100), R.randint(16, 100)),
                        (R.randint(16, 100), R.randint(16, 100)), R.choice([32 * 32, 24 * 40, 16 * 48]), R.randint(1, 3),
                        solver, shift, guide, seed, neg)
    else:
        # VACE: a source video and / or a mask and / or reference images of random sizes, at a random context scale
        size = [16 * R.randint(2, 4), 16 * R.randint(2, 4)]
        video = R.random() < 0.7
        refs = [(R.randint(16, 80), R.randint(16, 80)) for _ in range(R.choice([0, 0, 1, 2]))]
        if not video and not refs:
            refs = [(R.randint(16, 80), R.randint(16, 80))]
        pipe.vace_case(f"s{SEED}_pipeline_vace_{i}", R.choice(PROMPTS), size, 1 + 4 * R.randint(0, 2), steps, solver,
                       shift, guide, seed, neg, round(R.uniform(0.3, 1.5), 2), video=video,
                       mask=video and R.random() < 0.6, refs=refs)


kinds = [dit, t5, vae, clip, scheduler, strings, vace, batch]
if os.environ.get("SWEEP_KINDS"):  # a comma list of the kinds above: those only
    kinds = [k for k in kinds if k.__name__ in os.environ["SWEEP_KINDS"].split(",")]
if os.environ.get("SWEEP_PIPELINES"):
    kinds = [pipeline]
for i in range(COUNT):
    kind = kinds[i % len(kinds)]
    try:
        kind(i)
    except Exception as e:  # a configuration the official code itself rejects: not a case
        print(f"skipped {kind.__name__} {i}: {type(e).__name__}: {e}", flush=True)
