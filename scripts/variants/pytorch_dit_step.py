"""Usage: WAN21_SRC=CHECKOUT python pytorch_dit_step.py FRAMES HEIGHT WIDTH [LAYERS]  (THREADS=2 by default)
The official WanModel (wan/modules/model.py) on this CPU in float32 with PyTorch SDPA as its attention (the official
flash_attention needs CUDA): one sampling step = conditional + unconditional forward, random weights, real shapes.
AUTOCAST=bf16: the step under torch.autocast("cpu", bfloat16), as the official code runs under CUDA autocast."""
import sys, time, os, json
# WAN21_SRC: a checkout of Wan-Video/Wan2.1 (see README.md here); run with the venv make.sh builds.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch, ref
import torch.nn.functional as F

def sdpa(q, k, v, q_lens=None, k_lens=None, dropout_p=0., softmax_scale=None, q_scale=None, causal=False,
         window_size=(-1, -1), deterministic=False, dtype=torch.bfloat16, version=None):
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, N, L, C]
    mask = None
    if k_lens is not None and int(k_lens.min()) < k.shape[2]:
        mask = (torch.arange(k.shape[2])[None, :] < k_lens.view(-1, 1)).view(-1, 1, 1, k.shape[2])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=softmax_scale).transpose(1, 2)

ref.model.flash_attention = sdpa
torch.set_grad_enabled(False)
threads = int(os.environ.get("THREADS", "2")); torch.set_num_threads(threads)
frames, H, W = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
layers = int(sys.argv[4]) if len(sys.argv) > 4 else 30
m = ref.model.WanModel(model_type="t2v", dim=1536, ffn_dim=8960, freq_dim=256, text_dim=4096, num_heads=12,
                       num_layers=layers, in_dim=16, out_dim=16).eval()
lat_f, lat_h, lat_w = (frames - 1) // 4 + 1, H // 8, W // 8
x = torch.randn(16, lat_f, lat_h, lat_w); seq = lat_f * lat_h * lat_w // 4
ctx, ctxn = torch.randn(30, 4096), torch.randn(108, 4096)
t = torch.tensor([999.0])
autocast = os.environ.get("AUTOCAST", "")
if autocast == "bf16":
    # The model's own `torch.cuda.amp.autocast(dtype=torch.float32)` blocks (time embedding, gates) do nothing on the
    # CPU: make them leave the CPU's autocast for float32 there, as they leave CUDA's.
    class _Amp:
        @staticmethod
        def autocast(dtype=torch.bfloat16, **kw):
            return torch.autocast("cpu", enabled=False) if dtype == torch.float32 else torch.autocast("cpu", dtype=dtype)
    ref.model.amp = _Amp
def step():
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast == "bf16"):
        a = m(x=[x], t=t, context=[ctx], seq_len=seq)[0]
        b = m(x=[x], t=t, context=[ctxn], seq_len=seq)[0]
    return b + 5 * (a.float() - b.float())
step()
times = []
for _ in range(2):
    t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
import resource
print(json.dumps({"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "impl": "pytorch", "torch": torch.__version__, "threads": threads, "autocast": autocast or "none", "frames": frames, "size": f"{W}x{H}",
                  "tokens": seq, "layers": layers, "seconds_per_step": min(times), "all": times}))
