"""Usage: WAN21_SRC=CHECKOUT python pytorch_clip.py  (THREADS=2 by default)
The official CLIP ViT-H/14 vision tower (wan/modules/clip.py, as clip_xlm_roberta_vit_h_14 configures it) on this CPU
in float32, random weights: CLIPModel.visual of one image (all blocks but the last), seconds and peak RSS."""
import sys, time, os, json, resource
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch, ref

torch.set_grad_enabled(False)
threads = int(os.environ.get("THREADS", "2")); torch.set_num_threads(threads)
m = ref.clip.VisionTransformer(image_size=224, patch_size=14, dim=1280, mlp_ratio=4, out_dim=1024, num_heads=16,
                               num_layers=32, pool_type="token", pre_norm=True, post_norm=False,
                               activation="gelu").eval()
x = torch.randn(1, 3, 224, 224)
m(x, use_31_block=True)
times = []
for _ in range(3):
    t0 = time.perf_counter(); m(x, use_31_block=True); times.append(time.perf_counter() - t0)
print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "threads": threads, "seconds": min(times),
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
