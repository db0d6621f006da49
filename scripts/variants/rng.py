import sys, json, torch
from safetensors.torch import save_file
OUT = sys.argv[1]
seeds = [7, 123456789, 2**40 + 3, 2**63 - 1]
shapes = [[1], [15], [31], [32], [33], [2, 3, 4, 5], [16, 5, 33, 61]]
ten, outs, large = {}, {}, {}
def nm(s): return "x".join(map(str, s))
for s in seeds:
    for sh in shapes:
        torch.manual_seed(s); a = torch.randn(sh, dtype=torch.float32)
        g = torch.Generator(device="cpu").manual_seed(s); b = torch.randn(sh, generator=g)
        for pre, v in (("manual_seed", a), ("generator", b)):
            k = f"{pre}_{s}_{nm(sh)}"
            f = v.flatten()
            if f.numel() > 4096:
                large[k] = {"numel": f.numel(), "shape": sh}
                ten[f"out.{k}_head"] = f[:4096].clone(); ten[f"out.{k}_tail"] = f[-4096:].clone()
                outs[f"{k}_head"] = {"tensor": f"out.{k}_head", "shape": [4096], "dtype": "float32"}
                outs[f"{k}_tail"] = {"tensor": f"out.{k}_tail", "shape": [4096], "dtype": "float32"}
                outs[f"{k}_sum"] = float(f.double().sum()); outs[f"{k}_sum_sq"] = float((f.double() ** 2).sum())
            else:
                ten["out." + k] = v.contiguous(); outs[k] = {"tensor": "out." + k, "shape": sh, "dtype": "float32"}
succ = [[3], [1], [20], [1], [1], [7], [16], [5]]
g = torch.Generator().manual_seed(99)
for i, sh in enumerate(succ):
    k = f"successive_{i}_{nm(sh)}"
    ten["out." + k] = torch.randn(sh, generator=g); outs[k] = {"tensor": "out." + k, "shape": sh, "dtype": "float32"}
save_file(ten, f"{OUT}/cases/v_rng.safetensors")
c = {"name": "v_rng", "component": "rng", "model": None,
     "config": {"seeds": seeds, "shapes": shapes, "successive": {"seed": 99, "shapes": succ}, "large": large, "dtype": "float32", "device": "cpu"},
     "inputs": {}, "outputs": outs, "tolerance": {"rel_l2": 0, "max_abs": 0}, "notes": "variant",
     "tolerances": {k: {"rel_l2": 1e-12, "max_abs": 1e-6} for k in outs if k.endswith("_sum") or k.endswith("_sum_sq")}}
json.dump(c, open(f"{OUT}/cases/v_rng.json", "w"), indent=1)
print(len(outs))
