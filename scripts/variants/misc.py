"""Variant scheduler / rng / tokenizer cases."""
import sys, json, math
import torch
import ref
from gen import write_case, OUT, GOLD

torch.set_grad_enabled(False)
import importlib.util, os


def load_util(name):
    full = "wan.utils." + name
    spec = importlib.util.spec_from_file_location(full, os.path.join(ref.SRC, "wan/utils", name + ".py"))
    m = importlib.util.module_from_spec(spec); sys.modules[full] = m; spec.loader.exec_module(m); return m


fm = load_util("fm_solvers")
fmu = load_util("fm_solvers_unipc")
from diffusers import FlowMatchEulerDiscreteScheduler


def sched(solver, steps, shift):
    if solver == "unipc":
        s = fmu.FlowUniPCMultistepScheduler(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
        s.set_timesteps(steps, device="cpu", shift=shift); ts = s.timesteps
    elif solver == "dpm++":
        s = fm.FlowDPMSolverMultistepScheduler(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
        ts, _ = fm.retrieve_timesteps(s, device="cpu", sigmas=fm.get_sampling_sigmas(steps, shift))
    else:
        s = FlowMatchEulerDiscreteScheduler(shift=shift); s.set_timesteps(steps); ts = s.timesteps
    return s, ts


DEFAULT_COND, DEFAULT_UNCOND = "0.3*x + 0.1*sin(t/100)*c1", "-0.2*x + 0.05*cos(t/70)*c2"


def stand_in(expr, x, t, c1, c2):
    """A model expression of the config evaluated as Python does: t a float, x/c1/c2 float32 tensors."""
    return eval(expr, {"__builtins__": {}, "sin": math.sin, "cos": math.cos, "exp": math.exp, "tanh": math.tanh},
                {"x": x, "t": t, "c1": c1, "c2": c2})


def trajectory(name, solver, steps, shift, guide, xs, cs, shape, cond_expr=DEFAULT_COND, uncond_expr=DEFAULT_UNCOND):
    x0 = torch.randn(shape, generator=torch.Generator().manual_seed(xs))
    g = torch.Generator().manual_seed(cs)
    c1 = torch.randn(shape, generator=g); c2 = torch.randn(shape, generator=g)
    s, ts = sched(solver, steps, shift)
    sig = s.sigmas.to(torch.float32).clone()
    lat = x0; outs = []
    for t in ts:
        tv = float(t)
        if (cond_expr, uncond_expr) == (DEFAULT_COND, DEFAULT_UNCOND):
            cond = 0.3 * lat + (0.1 * math.sin(tv / 100)) * c1
            unc = -0.2 * lat + (0.05 * math.cos(tv / 70)) * c2
        else:
            cond = stand_in(cond_expr, lat, tv, c1, c2)
            unc = stand_in(uncond_expr, lat, tv, c1, c2)
        npred = unc + guide * (cond - unc)
        lat = s.step(npred.unsqueeze(0), t, lat.unsqueeze(0), return_dict=False)[0].squeeze(0)
        outs.append(lat)
    cfg = {"solver": solver, "steps": steps, "shift": shift, "guide_scale": guide, "num_train_timesteps": 1000,
           "x0_seed": xs, "c_seed": cs, "model_cond": cond_expr,
           "model_uncond": uncond_expr, "timestep_dtype": "float32" if solver == "euler" else "int64"}
    write_case(name, "scheduler", None, {"x0": x0, "c1": c1, "c2": c2},
               {"timesteps": ts if solver != "euler" else ts.to(torch.float32), "sigmas": sig,
                "latents": torch.stack(outs)}, config=cfg, rel=1e-5)
    p = f"{OUT}/cases/{name}.json"; c = json.load(open(p))
    c["tolerances"]["sigmas"] = {"rel_l2": 1e-7, "max_abs": 1e-7}
    if solver == "euler":
        c["tolerances"]["timesteps"] = {"rel_l2": 0.0, "max_abs": 0.0}
    c["tolerance"] = c["tolerances"]["latents"]
    json.dump(c, open(p, "w"), indent=1)


def main():
    trajectory("v_scheduler_unipc_7_3", "unipc", 7, 3.0, 4.0, 5, 6, [16, 1, 2, 4])
    trajectory("v_scheduler_unipc_2_1", "unipc", 2, 1.0, 1.0, 7, 8, [16, 2, 2, 2])
    trajectory("v_scheduler_dpmpp_6_2", "dpm++", 6, 2.0, 7.5, 9, 10, [16, 3, 2, 2])
    trajectory("v_scheduler_dpmpp_17_7", "dpm++", 17, 7.0, 3.0, 1, 2, [16, 1, 2, 2])
    trajectory("v_scheduler_euler_6_3", "euler", 6, 3.0, 6.0, 3, 4, [16, 1, 4, 2])
    # Another stand-in model: the runner reads the expressions from the config.
    trajectory("v_scheduler_unipc_expr", "unipc", 9, 4.0, 5.5, 21, 22, [16, 2, 2, 2],
               "0.25*x - 0.07*cos(t/90)*c1 + 0.01*c2", "-(0.1*x) + (0.02*sin(t/50) - 0.01)*c2 - 0.03*c1/2")
    trajectory("v_scheduler_euler_expr", "euler", 5, 2.0, 3.0, 23, 24, [16, 1, 2, 4],
               "0.4*x*c1 + exp(-t/500)*c2", "tanh(t/1000)*x - 0.5*c1*c2")

    # sigma tables
    pairs = [[25, 5.0], [10, 1.0], [3, 12.0], [60, 2.5]]
    outs = {}
    for n, s_ in pairs:
        tag = f"{n}_{s_:g}"
        s, ts = sched("unipc", n, s_); outs[f"timesteps_{tag}"] = ts; outs[f"sigmas_{tag}"] = s.sigmas.to(torch.float32)
        s, ts = sched("dpm++", n, s_); outs[f"dpm_timesteps_{tag}"] = ts; outs[f"dpm_sigmas_{tag}"] = s.sigmas.to(torch.float32)
        s, ts = sched("euler", n, s_); outs[f"euler_timesteps_{tag}"] = ts.to(torch.float32); outs[f"euler_sigmas_{tag}"] = s.sigmas.to(torch.float32)
    write_case("v_scheduler_sigmas", "scheduler", None, {}, outs, config={"pairs": pairs}, rel=1e-7)
    p = f"{OUT}/cases/v_scheduler_sigmas.json"; c = json.load(open(p))
    for k in c["tolerances"]:
        c["tolerances"][k] = {"rel_l2": 1e-7, "max_abs": 1e-7} if "sigmas" in k else {"rel_l2": 0.0, "max_abs": 0.0}
    json.dump(c, open(p, "w"), indent=1)


if __name__ == "__main__":
    main()
