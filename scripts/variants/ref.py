"""Load the official Wan2.1 modules on CPU, float32, with the plain-attention stand-in the golden README describes."""
import sys, types, importlib.util, os, json, warnings
import torch
torch.cuda.current_device = lambda: "cpu"

warnings.filterwarnings("ignore")
# A checkout of Wan-Video/Wan2.1 (the folder that holds wan/).
SRC = os.environ.get("WAN21_SRC") or sys.exit("ref.py: set WAN21_SRC to a checkout of Wan-Video/Wan2.1 (the folder that holds wan/)")


def _pkg(name, path=None):
    m = types.ModuleType(name)
    m.__path__ = [path] if path else []
    sys.modules[name] = m
    return m


_pkg("wan", os.path.join(SRC, "wan"))
_pkg("wan.modules", os.path.join(SRC, "wan/modules"))
_pkg("wan.utils", os.path.join(SRC, "wan/utils"))

def plain_attention(q, k, v, q_lens=None, k_lens=None, dropout_p=0., softmax_scale=None, q_scale=None,
                    causal=False, window_size=(-1, -1), deterministic=False, dtype=torch.bfloat16, version=None):
    # q [B, Lq, N, C]; keys at index >= k_lens[b] masked; float32 softmax
    out_dtype = q.dtype
    q, k, v = q.float(), k.float(), v.float()
    if q_scale is not None:
        q = q * q_scale
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    s = torch.einsum("blnc,bsnc->bnls", q, k) * scale
    if k_lens is not None:
        idx = torch.arange(k.shape[1])
        mask = idx[None, :] >= k_lens.view(-1, 1).to(idx)
        s = s.masked_fill(mask[:, None, None, :], float("-inf"))
    p = s.softmax(dim=-1)
    return torch.einsum("bnls,bsnc->blnc", p, v).to(out_dtype)


def _load(name):
    full = "wan.modules." + name
    spec = importlib.util.spec_from_file_location(full, os.path.join(SRC, "wan/modules", name + ".py"))
    m = importlib.util.module_from_spec(spec)
    sys.modules[full] = m
    spec.loader.exec_module(m)
    return m


tokenizers = _load("tokenizers")
attention = _load("attention")
attention.flash_attention = plain_attention
model = _load("model"); model.flash_attention = plain_attention
vace_model = _load("vace_model")
vae = _load("vae")
t5 = _load("t5")
xlm = _load("xlm_roberta")
clip = _load("clip"); clip.flash_attention = plain_attention

import wan.modules as _wm
for _n in ("attention", "model", "vae", "t5", "clip", "tokenizers", "xlm_roberta", "vace_model"):
    setattr(_wm, _n, sys.modules["wan.modules." + _n])
_wm.WanModel = model.WanModel


def load_wan(name):
    """wan.<name> (text2video, image2video) with the module stubs above."""
    full = "wan." + name
    spec = importlib.util.spec_from_file_location(full, os.path.join(SRC, "wan", name + ".py"))
    m = importlib.util.module_from_spec(spec)
    sys.modules[full] = m
    spec.loader.exec_module(m)
    return m
