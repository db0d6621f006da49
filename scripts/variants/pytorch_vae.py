"""Usage: WAN21_SRC=CHECKOUT python pytorch_vae.py FRAMES HEIGHT WIDTH  (THREADS=2 by default)
The official Wan-VAE (wan/modules/vae.py, the real configuration: dim 96, z_dim 16) on this CPU in float32, random
weights: decode of a latent for FRAMES frames at HEIGHTxWIDTH and encode of such a video, seconds and peak RSS."""
import sys, time, os, json, resource
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch, ref

torch.set_grad_enabled(False)
threads = int(os.environ.get("THREADS", "2")); torch.set_num_threads(threads)
frames, H, W = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
m = ref.vae.WanVAE_(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                    temperal_downsample=[False, True, True], dropout=0.0).eval()
for p in m.parameters():
    p.normal_(0, 0.02)
scale = [torch.zeros(16), torch.ones(16)]
z = torch.randn(1, 16, (frames - 1) // 4 + 1, H // 8, W // 8)
t0 = time.perf_counter(); video = m.decode(z, scale).clamp_(-1, 1); decode = time.perf_counter() - t0
t0 = time.perf_counter(); m.encode(video, scale); encode = time.perf_counter() - t0
print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "threads": threads, "frames": frames, "size": f"{W}x{H}",
                  "decode_seconds": decode, "encode_seconds": encode,
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
