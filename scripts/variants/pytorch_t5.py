"""Usage: WAN21_SRC=CHECKOUT python pytorch_t5.py LAYERS [TOKENS]  (THREADS=2 by default)
The official umT5-XXL encoder (wan/modules/t5.py T5Encoder, umt5_xxl's configuration) with LAYERS of its 24 layers on
this CPU in float32 (the whole encoder in f32 needs 23 GB), random weights: one prompt of TOKENS tokens, seconds and
peak RSS. DTYPE=bf16: the encoder cast to bfloat16 as the official T5EncoderModel holds it (all 24 layers fit)."""
import sys, time, os, json, resource
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch, ref

torch.set_grad_enabled(False)
threads = int(os.environ.get("THREADS", "2")); torch.set_num_threads(threads)
layers = int(sys.argv[1]); tokens = int(sys.argv[2]) if len(sys.argv) > 2 else 512
m = ref.t5.T5Encoder(vocab=256384, dim=4096, dim_attn=4096, dim_ffn=10240, num_heads=64, num_layers=layers,
                     num_buckets=32, shared_pos=False, dropout=0.0).eval()
dtype = os.environ.get("DTYPE", "f32")
if dtype == "bf16":
    m = m.to(torch.bfloat16)
ids = torch.randint(3, 256384, (1, 512)); mask = torch.zeros(1, 512, dtype=torch.long); mask[0, :tokens] = 1
m(ids, mask)
times = []
for _ in range(2):
    t0 = time.perf_counter(); m(ids, mask); times.append(time.perf_counter() - t0)
print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "threads": threads, "dtype": dtype, "layers": layers, "tokens": tokens,
                  "seconds": min(times), "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
