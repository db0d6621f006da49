// WanSampling: flow-matching sigma schedules with shift, the UniPC / DPM++ / Euler solvers, classifier-free
// guidance, and TorchRandom (PyTorch CPU generator, seed for seed). See ../shared/golden/README.md
// ("Schedulers", "RNG").
import WanTensor
