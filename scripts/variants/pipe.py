"""Variant pipeline cases: the unmodified WanT2V/WanI2V.generate() with the golden tiny pipeline models."""
import sys, os, json, re, math
import numpy as np
import torch
from safetensors.torch import load_file
import ref
from gen import write_case, gold_model, OUT, GOLD

t2vmod = ref.load_wan("text2video")
i2vmod = ref.load_wan("image2video")
flfmod = ref.load_wan("first_last_frame2video")
vacemod = ref.load_wan("vace")
torch.set_grad_enabled(False)

shared = open(os.path.join(ref.SRC, "wan/configs/shared_config.py"), encoding="utf-8").read()
NEG = re.search(r"sample_neg_prompt = '([^']*)'", shared).group(1)


class Cfg:
    pass


def t5enc():
    j, sd = gold_model("pipe_t5")
    m = ref.t5.T5Encoder(**j["config"]).eval(); m.load_state_dict(sd)
    te = ref.t5.T5EncoderModel.__new__(ref.t5.T5EncoderModel)
    te.model = m
    te.tokenizer = ref.tokenizers.HuggingfaceTokenizer(name=GOLD + "/tokenizer", seq_len=512, clean="whitespace")
    return te


def vaewrap():
    j, sd = gold_model("pipe_vae")
    c = dict(j["config"]); mean = c.pop("latent_mean"); std = c.pop("latent_std")
    m = ref.vae.WanVAE_(**c).eval(); m.load_state_dict(sd)
    w = ref.vae.WanVAE.__new__(ref.vae.WanVAE)
    w.dtype = torch.float32; w.device = "cpu"; w.model = m
    w.mean = torch.tensor(mean); w.std = torch.tensor(std); w.scale = [w.mean, 1.0 / w.std]
    return w


class Recorder(torch.nn.Module):
    def __init__(self, m):
        super().__init__(); self.m = m; self.inputs = []; self.calls = 0

    def forward(self, x, **kw):
        if self.calls % 2 == 0:
            self.inputs.append(x[0].clone())
        self.calls += 1
        return self.m(x, **kw)


def dit(name):
    j, sd = gold_model(name)
    m = ref.model.WanModel(**j["config"]).eval(); m.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    return Recorder(m)


def setup(obj, model, neg):
    obj.config = Cfg(); obj.device = torch.device("cpu"); obj.num_train_timesteps = 1000
    obj.param_dtype = torch.float32; obj.t5_cpu = True; obj.text_encoder = t5enc(); obj.vae = vaewrap()
    obj.model = model; obj.sp_size = 1; obj.rank = 0; obj.vae_stride = (4, 8, 8); obj.patch_size = (1, 2, 2)
    obj.sample_neg_prompt = neg; obj.use_usp = False
    return obj


def ids_of(te, text):
    ids, mask = te.tokenizer([text], return_mask=True, add_special_tokens=True)
    return ids[0, :int(mask.sum())].to(torch.int64)


def timesteps_of(solver, steps, shift):
    """The timesteps the official generate() loops over, set up as it sets them up."""
    if solver == "unipc":
        s = ref.sys.modules["wan.utils.fm_solvers_unipc"].FlowUniPCMultistepScheduler(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
        s.set_timesteps(steps, device="cpu", shift=shift)
        return s.timesteps
    fm = ref.sys.modules["wan.utils.fm_solvers"]
    s = fm.FlowDPMSolverMultistepScheduler(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
    return fm.retrieve_timesteps(s, device="cpu", sigmas=fm.get_sampling_sigmas(steps, shift))[0]


def record_conditioning(p, seen):
    """Records the image pipelines' VAE input (the conditioning video) and its latent."""
    enc = p.vae.encode

    def rec_encode(vs):
        seen["vae_input"] = vs[0].clone()
        out = enc(vs)
        seen["y_latent"] = out[0].clone()
        return out

    p.vae.encode = rec_encode


def t2v_case(name, prompt, size, frame_num, steps, solver, shift, guide, seed, n_prompt, task="t2v"):
    p = setup(t2vmod.WanT2V.__new__(t2vmod.WanT2V), dit("pipe_dit_t2v"), NEG)
    video = p.generate(prompt, size=tuple(size), frame_num=frame_num, shift=shift, sample_solver=solver,
                       sampling_steps=steps, guide_scale=guide, n_prompt=n_prompt, seed=seed, offload_model=False)
    te = p.text_encoder
    neg = n_prompt if n_prompt else NEG
    ctx = te([prompt], "cpu")[0]; ctxn = te([neg], "cpu")[0]
    rec = p.model.inputs
    noise = rec[0]
    ts = timesteps_of(solver, steps, shift)
    cfg = {"task": task, "t5": "pipe_t5", "dit": "pipe_dit_t2v", "vae": "pipe_vae", "tokenizer": "tokenizer/",
           "size": list(size), "frame_num": frame_num, "sampling_steps": steps, "sample_solver": solver,
           "shift": shift, "guide_scale": guide, "seed": seed, "n_prompt": n_prompt,
           "default_negative_prompt_used": n_prompt == ""}
    outs = {"token_ids": ids_of(te, prompt), "neg_token_ids": ids_of(te, neg), "context": ctx, "context_null": ctxn,
            "timesteps": ts.to(torch.float32), "latents_before_step": torch.stack(rec[1:]),
            "video": video}
    write_case(name, "pipeline", None, {"prompt": prompt, "noise": noise}, outs, config=cfg, rel=1e-3)
    fix_tol(name)


def fix_tol(name):
    path = f"{OUT}/cases/{name}.json"
    c = json.load(open(path))
    for k, t in c["tolerances"].items():
        if k in ("context", "context_null", "y_latent", "vae_input"):
            t["rel_l2"] = 1e-4
        if k == "video":
            t.update({"rel_l2": 1e-3, "max_abs": 0.02})
        if k == "timesteps":
            t.update({"rel_l2": 1e-6, "max_abs": 1e-3})
        if k == "image_tensor":
            t.update({"rel_l2": 1e-6, "max_abs": 1e-5})
        if k == "noise":
            t.update({"rel_l2": 0, "max_abs": 1e-6})
    c["tolerance"] = {"rel_l2": 1e-3, "max_abs": 0.02}
    json.dump(c, open(path, "w"), indent=1)


def i2v_case(name, prompt, hw, max_area, frame_num, steps, solver, shift, guide, seed, n_prompt):
    g = torch.Generator().manual_seed(seed + 1000)
    base = torch.rand(3, 4, 4, generator=g)
    img = torch.nn.functional.interpolate(base[None], size=hw, mode="bilinear", align_corners=False)[0]
    img = (img * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()
    clip_fea = torch.randn(1, 257, 1280, generator=g)
    p = setup(i2vmod.WanI2V.__new__(i2vmod.WanI2V), dit("pipe_dit_i2v"), "镜头晃动，" + NEG)
    seen = {}

    class Clip:
        model = torch.nn.Module()

        def visual(self, vids):
            seen["image_tensor"] = vids[0][:, 0].clone()
            return clip_fea

    p.clip = Clip()
    record_conditioning(p, seen)
    from PIL import Image
    video = p.generate(prompt, Image.fromarray(img.numpy()), max_area=max_area, frame_num=frame_num, shift=shift,
                       sample_solver=solver, sampling_steps=steps, guide_scale=guide, n_prompt=n_prompt, seed=seed,
                       offload_model=False)
    rec = p.model.inputs
    te = p.text_encoder
    ts = timesteps_of(solver, steps, shift)
    lat = seen["y_latent"]
    cfg = {"task": "i2v", "t5": "pipe_t5", "dit": "pipe_dit_i2v", "vae": "pipe_vae", "tokenizer": "tokenizer/",
           "max_area": max_area, "frame_num": frame_num, "sampling_steps": steps, "sample_solver": solver,
           "shift": shift, "guide_scale": guide, "seed": seed, "n_prompt": n_prompt,
           "lat_h": lat.shape[2], "lat_w": lat.shape[3]}
    outs = {"image_tensor": seen["image_tensor"], "vae_input": seen["vae_input"], "y_latent": lat, "noise": rec[0],
            "context": te([prompt], "cpu")[0], "timesteps": ts.to(torch.float32), "latents_before_step": torch.stack(rec[1:]),
            "video": video}
    write_case(name, "pipeline", None, {"prompt": prompt, "image": img, "clip_features": clip_fea}, outs, config=cfg,
               rel=1e-3)
    fix_tol(name)


def smooth_image(g, hw):
    base = torch.rand(3, 4, 4, generator=g)
    img = torch.nn.functional.interpolate(base[None], size=hw, mode="bilinear", align_corners=False)[0]
    return (img * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()


def flf2v_model():
    """pipe_dit_i2v's weights as an flf2v model: plus img_emb.emb_pos [1, 514, 1280] (random)."""
    j, sd = gold_model("pipe_dit_i2v")
    cfg = dict(j["config"], model_type="flf2v")
    m = ref.model.WanModel(**cfg).eval()
    sd = {k: v.float() for k, v in sd.items()}
    sd["img_emb.emb_pos"] = torch.randn(1, 514, 1280, generator=torch.Generator().manual_seed(514)) * 0.1
    m.load_state_dict(sd, strict=False)
    from gen import write_model
    write_model("v_pipe_dit_flf2v", "WanModel", cfg, {k: v for k, v in m.state_dict().items() if k != "freqs"},
                notes="pipe_dit_i2v with model_type flf2v and a random img_emb.emb_pos")
    return Recorder(m)


def flf2v_case(name, prompt, first_hw, last_hw, max_area, steps, solver, shift, guide, seed, n_prompt):
    """WanFLF2V.generate: 81 frames (the official mask is built for 81 frames whatever frame_num is)."""
    g = torch.Generator().manual_seed(seed + 2000)
    first, last = smooth_image(g, first_hw), smooth_image(g, last_hw)
    clip_fea = torch.randn(2, 257, 1280, generator=g)
    # wan/configs: flf2v_14B is a deep copy of i2v_14B with "镜头切换，" prepended to its (i2v) negative prompt
    p = setup(flfmod.WanFLF2V.__new__(flfmod.WanFLF2V), flf2v_model(), "镜头切换，镜头晃动，" + NEG)
    seen = {}

    class Clip:
        model = torch.nn.Module()

        def visual(self, vids):
            seen["first_frame_tensor"] = vids[0][:, 0].clone(); seen["last_frame_tensor"] = vids[1][:, 0].clone()
            return clip_fea

    p.clip = Clip()
    record_conditioning(p, seen)
    from PIL import Image
    video = p.generate(prompt, Image.fromarray(first.numpy()), Image.fromarray(last.numpy()), max_area=max_area,
                       frame_num=81, shift=shift, sample_solver=solver, sampling_steps=steps, guide_scale=guide,
                       n_prompt=n_prompt, seed=seed, offload_model=False)
    rec = p.model.inputs
    te = p.text_encoder
    ts = timesteps_of(solver, steps, shift)
    lat = seen["y_latent"]
    cfg = {"task": "flf2v", "t5": "pipe_t5", "dit": "v_pipe_dit_flf2v", "vae": "pipe_vae", "tokenizer": "tokenizer/",
           "max_area": max_area, "frame_num": 81, "sampling_steps": steps, "sample_solver": solver, "shift": shift,
           "guide_scale": guide, "seed": seed, "n_prompt": n_prompt, "lat_h": lat.shape[2], "lat_w": lat.shape[3]}
    outs = {"first_frame_tensor": seen["first_frame_tensor"], "last_frame_tensor": seen["last_frame_tensor"],
            "vae_input": seen["vae_input"], "y_latent": lat, "noise": rec[0], "context": te([prompt], "cpu")[0],
            "timesteps": ts.to(torch.float32), "latents_before_step": torch.stack(rec[1:]), "video": video}
    write_case(name, "pipeline", None, {"prompt": prompt, "first_frame": first, "last_frame": last,
                                         "clip_features": clip_fea}, outs, config=cfg, rel=1e-3)
    fix_tol(name)
    c = json.load(open(f"{OUT}/cases/{name}.json"))
    for k in ("first_frame_tensor", "last_frame_tensor"):
        c["tolerances"][k] = {"rel_l2": 1e-6, "max_abs": 1e-5}
    c["notes"] = ("WanFLF2V.generate(prompt, first, last, max_area, frame_num=81, ...) with pipe_dit_i2v as an flf2v model "
                  "(v_pipe_dit_flf2v: plus a random img_emb.emb_pos). CLIP features [2,257,1280] are given. The last "
                  "frame has another size than the first: the official code center-crops (zero-pads) it to a size "
                  "computed from the ratio of the sizes, without resizing, then resizes both to the latent grid.")
    json.dump(c, open(f"{OUT}/cases/{name}.json", "w"), indent=1)


def vace_model():
    cv = dict(vace_layers=None, vace_in_dim=96, model_type="vace", patch_size=[1, 2, 2], text_len=512, in_dim=16,
              dim=64, ffn_dim=128, freq_dim=256, text_dim=32, out_dim=16, num_heads=2, num_layers=2,
              window_size=[-1, -1], qk_norm=True, cross_attn_norm=True, eps=1e-6)
    m = ref.vace_model.VaceWanModel(**cv).eval()
    from gen import randomize, write_model
    randomize(m, 104)
    write_model("v_pipe_dit_vace", "VaceWanModel", cv, {k: v for k, v in m.state_dict().items() if k != "freqs"},
                notes="a tiny VaceWanModel for the pipe_t5 / pipe_vae pipeline (vace_layers None = [0])")
    return Recorder(m)


class VidProc:
    """Stands in for VaceVideoProcessor: the source video / mask are given at the generation's size and frame count,
    so its resize_crop is the identity and load_video is uint8 / 127.5 - 1 (video.float().div_(127.5).sub_(1.))."""

    def __init__(self, video, mask):
        self.video, self.mask = video, mask

    def set_area(self, a): pass

    def set_seq_len(self, n): pass

    @staticmethod
    def tensor(u8):  # [F, H, W, 3] uint8 -> [3, F, H, W]
        return u8.permute(3, 0, 1, 2).float().div_(127.5).sub_(1.)

    def load_video(self, key, **kw):
        return self.tensor(self.video), None, None, None

    def load_video_pair(self, v, m, **kw):
        return self.tensor(self.video), self.tensor(self.mask), None, None, None


def vace_case(name, prompt, size, frame_num, steps, solver, shift, guide, seed, n_prompt, context_scale,
              video=False, mask=False, refs=()):
    """WanVace.prepare_source (with the video processor stood in: inputs at the generation's size) and
    WanVace.generate, unmodified. refs: sizes (H, W) of reference images (PNG files read by the official code)."""
    import tempfile
    from PIL import Image
    g = torch.Generator().manual_seed(seed + 3000)
    W, H = size
    inputs = {"prompt": prompt}
    vid = msk = None
    if video:
        vid = torch.stack([smooth_image(g, (H, W)) for _ in range(frame_num)])
        inputs["video"] = vid
    if mask:
        # white = generate, black = keep; a block that moves, grey edges (the official threshold is 0.5 after (m+1)/2)
        mk = torch.zeros(frame_num, H, W, 3, dtype=torch.uint8)
        for f in range(frame_num):
            mk[f, H // 4: 3 * H // 4, f % W: f % W + W // 2] = 255
            mk[f, :, 0] = 127 + (f % 3)
        inputs["mask"] = mk
        msk = mk
    ref_paths = []
    tmp = tempfile.mkdtemp()
    for i, hw in enumerate(refs):
        img = smooth_image(g, hw)
        inputs[f"ref_image{i}"] = img
        path = os.path.join(tmp, f"ref{i}.png")
        Image.fromarray(img.numpy()).save(path)
        ref_paths.append(path)
    p = setup(vacemod.WanVace.__new__(vacemod.WanVace), vace_model(), NEG)
    p.vid_proc = VidProc(vid, msk)
    # prepare_source only takes the areas of 480x832 and 720x1280 (it configures the video processor by them, which
    # is stood in here); the official CLI passes it the generation's size. For a tiny size the check is passed with
    # ints whose product is 480*832: everything else in prepare_source sees the real width and height.
    class Side(int):
        def __mul__(self, other):
            return 480 * 832
    src_video, src_mask, src_refs = p.prepare_source([("video" if video else None)], [("mask" if mask else None)],
                                                     [ref_paths if ref_paths else None], frame_num,
                                                     (Side(size[0]), Side(size[1])), "cpu")
    seen = {}
    enc = p.vace_encode_frames

    def rec_frames(frames, ref_images, masks=None, vae=None):
        z0 = enc(frames, ref_images, masks=masks, vae=vae)
        seen["vace_frames"] = z0[0].clone()
        return z0

    p.vace_encode_frames = rec_frames
    encm = p.vace_encode_masks

    def rec_masks(masks, ref_images=None, vae_stride=None):
        m0 = encm(masks, ref_images, vae_stride)
        seen["vace_masks"] = m0[0].clone()
        return m0

    p.vace_encode_masks = rec_masks
    video_out = p.generate(prompt, src_video, src_mask, src_refs, size=tuple(size), frame_num=frame_num,
                           context_scale=context_scale, shift=shift, sample_solver=solver, sampling_steps=steps,
                           guide_scale=guide, n_prompt=n_prompt, seed=seed, offload_model=False)
    rec = p.model.inputs
    te = p.text_encoder
    neg = n_prompt if n_prompt else NEG
    ts = timesteps_of(solver, steps, shift)
    cfg = {"task": "vace", "t5": "pipe_t5", "dit": "v_pipe_dit_vace", "vae": "pipe_vae", "tokenizer": "tokenizer/",
           "size": list(size), "frame_num": frame_num, "sampling_steps": steps, "sample_solver": solver, "shift": shift,
           "guide_scale": guide, "seed": seed, "n_prompt": n_prompt, "context_scale": context_scale,
           "reference_images": len(refs)}
    outs = {"token_ids": ids_of(te, prompt), "neg_token_ids": ids_of(te, neg), "context": te([prompt], "cpu")[0],
            "context_null": te([neg], "cpu")[0], "vace_frames": seen["vace_frames"], "vace_masks": seen["vace_masks"],
            "noise": rec[0], "timesteps": ts.to(torch.float32), "latents_before_step": torch.stack(rec[1:]),
            "video": video_out}
    write_case(name, "pipeline", None, inputs, outs, config=cfg, rel=1e-3)
    fix_tol(name)
    c = json.load(open(f"{OUT}/cases/{name}.json"))
    c["tolerances"]["vace_frames"]["rel_l2"] = 1e-4
    c["tolerances"]["vace_masks"] = {"rel_l2": 0.0, "max_abs": 0.0}
    c["notes"] = ("WanVace.prepare_source + WanVace.generate (wan/vace.py) with a tiny VaceWanModel (v_pipe_dit_vace) "
                  "and the pipe_t5 / pipe_vae models. Inputs as uint8: video / mask [F, H, W, 3] at the generation's size "
                  "and frame count (the official video processor then only normalises: v / 127.5 - 1), reference images "
                  "[h, w, 3] (ref_image0, ...; read as PNG files by the official code, fitted onto a white canvas when "
                  "their size differs). vace_frames = vace_encode_frames (z0), vace_masks = vace_encode_masks (m0); "
                  "noise has the references' latent frames too; the video is decoded without them.")
    json.dump(c, open(f"{OUT}/cases/{name}.json", "w"), indent=1)


if __name__ == "__main__":
    t2v_case("v_pipeline_t2v_a", "A red fox jumps over a frozen river at dawn, cinematic 4K.", [64, 48], 13, 5,
             "unipc", 3.0, 4.5, 2025, "")
    t2v_case("v_pipeline_t2v_dpm_portrait", "  一位老人在  雨中撑伞行走  ", [32, 64], 9, 4, "dpm++", 8.0, 7.0, 99,
             "bad hands, 模糊")
    t2v_case("v_pipeline_t2i_b", "A poster with the word “HELLO” in bold letters", [80, 48], 1, 2, "unipc", 5.0,
             5.0, 3, "", task="t2i")
    i2v_case("v_pipeline_i2v_wide", "The waves crash on the rocks.", (50, 90), 48 * 64, 9, 4, "unipc", 5.0, 3.5, 11, "")
    vace_case("v_pipeline_vace_inpaint", "A dog runs on the beach.", [48, 32], 9, 3, "unipc", 5.0, 5.0, 17, "", 0.9,
              video=True, mask=True, refs=[(32, 48), (20, 40)])
    vace_case("v_pipeline_vace_ref", "A red car.", [32, 48], 5, 2, "unipc", 3.0, 4.0, 18, "low quality", 1.0,
              refs=[(50, 30)])
    vace_case("v_pipeline_vace_control", "Waves.", [48, 32], 5, 2, "dpm++", 5.0, 5.0, 19, "", 1.0, video=True)
    flf2v_case("v_pipeline_flf2v", "The flower opens.", (40, 56), (30, 50), 32 * 32, 2, "unipc", 5.0, 5.0, 21, "")
    i2v_case("v_pipeline_i2v_dpm_tall", "A bird takes off.", (72, 40), 32 * 32, 5, 3, "dpm++", 3.0, 5.0, 5,
             "static, blurry")
