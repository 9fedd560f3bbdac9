"""Times auto_LiRPA's CROWN on the settings of `benches/crown.rs`, for the ratios in docs/experiments.md.

Usage: python3 auto_lirpa_time.py DATA_DIR [THREADS]
DATA_DIR is ../shared/data (models/*.json, mnist/*-idx*-ubyte). Needs torch and auto_LiRPA.

Prints one line per setting: milliseconds per image (median of 5 runs after a warm-up) for
- adv-mnist-mlp-2x100, l_inf 0.1 with the [0, 1] box and l2 1.0 without it: the first 100 test images
  one at a time, and all 100 in one batch;
- adv-mnist-cnn-small, l_inf 0.1 with the box: the first 100 test images one at a time;
- the CIFAR-shaped network of benches/crown.rs (target/bench-models/cifar-shaped.json, written by
  `cargo bench --bench crown`), l_inf 2/255 with the box, on the bench's 100 inputs, one at a time
  and in one batch.
Every image's 9 margins (label minus each other class), float64, method "CROWN", default options,
torch on THREADS threads (default 1). Misclassified images are bounded too (the time is the same).
"""
import os, sys, time
import numpy as np
import torch
from auto_LiRPA import BoundedModule, BoundedTensor
from auto_LiRPA.perturbations import PerturbationLpNorm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data"))
from nncert_torch import idx, load

torch.set_default_dtype(torch.float64)
data = sys.argv[1]
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)


images = idx(f"{data}/mnist/t10k-first1100-images-idx3-ubyte").reshape(-1, 784).astype(np.float64)[:100] / 255.0
labels = idx(f"{data}/mnist/t10k-first1100-labels-idx1-ubyte")[:100].astype(np.int64)


def spec_matrix(y):
    c = torch.zeros(len(y), 9, 10)
    for b, label in enumerate(y):
        others = [t for t in range(10) if t != label]
        for k, t in enumerate(others):
            c[b, k, label], c[b, k, t] = 1.0, -1.0
    return c


def bound(bounded, x, y, norm, eps, box):
    p = float("inf") if norm == "linf" else 2.0
    if box:
        lo = torch.clamp(x - eps, 0.0, 1.0) if p == float("inf") else torch.zeros_like(x)
        hi = torch.clamp(x + eps, 0.0, 1.0) if p == float("inf") else torch.ones_like(x)
        ptb = PerturbationLpNorm(norm=p, eps=eps, x_L=lo, x_U=hi)
    else:
        ptb = PerturbationLpNorm(norm=p, eps=eps)
    lb, _ = bounded.compute_bounds(x=(BoundedTensor(x, ptb),), C=spec_matrix(y), method="CROWN", bound_upper=False)
    return lb


def run(name, model, shape, norm, eps, box, batch, xs=None, ys=None):
    net, _ = load(model if model.endswith(".json") else f"{data}/models/{model}.json")
    xs = torch.tensor(images).reshape(-1, *shape) if xs is None else xs
    ys = labels if ys is None else ys
    bounded = BoundedModule(net, xs[:batch], device="cpu")
    bound(bounded, xs[:batch], ys[:batch], norm, eps, box)  # warm-up
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for s in range(0, 100, batch):
            bound(bounded, xs[s:s + batch], ys[s:s + batch], norm, eps, box)
        times.append((time.perf_counter() - start) / 100 * 1000)
    print(f"{name}: {sorted(times)[2]:.3f} ms per image (batch {batch}; runs {', '.join(f'{t:.3f}' for t in times)})", flush=True)


for batch in (1, 100):
    run("adv-mnist-mlp-2x100 linf-0.1-box", "adv-mnist-mlp-2x100", [784], "linf", 0.1, True, batch)
    run("adv-mnist-mlp-2x100 l2-1.0", "adv-mnist-mlp-2x100", [784], "l2", 1.0, False, batch)
run("adv-mnist-cnn-small linf-0.1-box", "adv-mnist-cnn-small", [1, 28, 28], "linf", 0.1, True, 1)

# The CIFAR-shaped network of benches/crown.rs (written there to target/bench-models), on the
# bench's inputs x_j = ((7919 j + 104729 i) mod 1000) / 1000, i = 1..100, labelled by the network.
cifar = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "bench-models", "cifar-shaped.json")
if os.path.exists(cifar):
    xs = torch.tensor([[((j * 7919 + i * 104729) % 1000) / 1000 for j in range(3072)] for i in range(1, 101)]).reshape(-1, 3, 32, 32)
    ys = load(cifar)[0](xs).argmax(dim=1).numpy()
    for batch in (1, 100):
        run("cifar-shaped-conv linf-2/255-box", cifar, [3, 32, 32], "linf", 2.0 / 255.0, True, batch, xs, ys)
else:
    print(f"skipped the CIFAR-shaped network: {cifar} not found (run `cargo bench --bench crown` first)")
