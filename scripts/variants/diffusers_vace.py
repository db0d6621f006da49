"""The golden tiny VACE DiT as a diffusers folder (WanVACETransformer3DModel.save_pretrained) and one forward of the
official VaceWanModel on new inputs: Tests/Variants/weights/dit_vace_diffusers and the case v_weights_dit_vace_diffusers.
Run by hand (needs diffusers >= 0.35, which has WanVACETransformer3DModel, and transformers 5 beside it):
  WAN21_SRC=CHECKOUT python diffusers_vace.py OUT GOLDEN
The diffusers model runs the same inputs and must agree with the official one before anything is written, so the
key mapping below is checked against diffusers' own module, not only against WanKit."""
import sys, os, json
import torch
from safetensors.torch import load_file
import ref
sys.argv[3:] = ["none"]  # gen.py's groups: none run on import, only its writers are used
from gen import write_case, diffusers_dit_name, OUT, GOLD

from diffusers import WanVACETransformer3DModel

torch.set_grad_enabled(False)

j = json.load(open(f"{GOLD}/weights/dit_vace.json"))
cfg = j["config"]
official_sd = load_file(f"{GOLD}/weights/dit_vace.safetensors")
official = ref.vace_model.VaceWanModel(**cfg).eval()
official.load_state_dict({k: v.float() for k, v in official_sd.items()}, strict=False)

dm = WanVACETransformer3DModel(
    patch_size=tuple(cfg["patch_size"]), num_attention_heads=cfg["num_heads"],
    attention_head_dim=cfg["dim"] // cfg["num_heads"], in_channels=cfg["in_dim"], out_channels=cfg["out_dim"],
    text_dim=cfg["text_dim"], freq_dim=cfg["freq_dim"], ffn_dim=cfg["ffn_dim"], num_layers=cfg["num_layers"],
    cross_attn_norm=cfg["cross_attn_norm"], qk_norm="rms_norm_across_heads" if cfg["qk_norm"] else None,
    eps=cfg["eps"], vace_layers=cfg["vace_layers"], vace_in_channels=cfg["vace_in_dim"]).eval()
renamed = {diffusers_dit_name(k): v for k, v in official_sd.items()}
own = dm.state_dict()
for k in own:  # the official tensors keep a singleton batch axis on modulation; diffusers' has the same [1, n, dim]
    renamed[k] = renamed[k].reshape(own[k].shape)
dm.load_state_dict(renamed, strict=True, assign=False)

g = torch.Generator().manual_seed(31)
shape = [16, 2, 6, 4]
x = torch.randn(shape, generator=g)
vc = torch.randn([cfg["vace_in_dim"]] + shape[1:], generator=g)
ctx = torch.randn(11, cfg["text_dim"], generator=g)
t = torch.tensor([777.0])
scale = 0.85
seq_len = shape[1] * (shape[2] // 2) * (shape[3] // 2) + 5
y = official(x=[x], t=t, vace_context=[vc], context=[ctx], seq_len=seq_len, vace_context_scale=scale)[0]

# diffusers: the context padded with zeros to text_len as its pipeline and the official model do.
ctx512 = torch.cat([ctx, ctx.new_zeros(cfg["text_len"] - ctx.shape[0], ctx.shape[1])])
yd = dm(hidden_states=x[None], timestep=t, encoder_hidden_states=ctx512[None], control_hidden_states=vc[None],
        control_hidden_states_scale=torch.tensor([scale] * len(cfg["vace_layers"])), return_dict=False)[0][0]
rel = float((yd - y).norm() / y.norm())
print("diffusers vs official rel_l2", rel)
assert rel < 1e-5, "the name mapping does not reproduce the official model"

folder = f"{OUT}/weights/dit_vace_diffusers/transformer"
dm.to(torch.float16).save_pretrained(folder)  # the golden VACE is stored in float16: the same values
json.dump({"model": "dit_vace_diffusers", "class": "WanVACETransformer3DModel", "config": cfg, "layout": "diffusers",
           "files": ["dit_vace_diffusers/transformer/"],
           "notes": "the golden dit_vace as WanVACETransformer3DModel.save_pretrained writes it (float16): the "
                    "WanTransformer3DModel names plus vace_patch_embedding and vace_blocks.N.{proj_in, proj_out} = "
                    "official before_proj / after_proj; config.json has vace_layers and vace_in_channels"},
          open(f"{OUT}/weights/dit_vace_diffusers.json", "w"), indent=1)
write_case("v_weights_dit_vace_diffusers", "weights", "dit_vace_diffusers",
           {"x": x, "vace_context": vc, "t": t, "context": ctx, "seq_len": seq_len, "vace_context_scale": scale},
           {"y": y}, notes="the official VaceWanModel's output; the model read from a diffusers folder")
