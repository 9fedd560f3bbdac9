"""CROWN margins of a JSON-format MLP by auto_LiRPA (float64), for nncert's differential test.

Usage: python3 lirpa_crown.py MODEL.json IMAGES-IDX LABELS-IDX NORM EPS BOX COUNT > out.json
NORM: l2 or linf; BOX: "0,1" or "none". Writes {"images": [{"index", "label", "lower": [per class, null for the label]}]}.
"""
import json, os, sys
import numpy as np
import torch
from auto_LiRPA import BoundedModule, BoundedTensor
from auto_LiRPA.perturbations import PerturbationLpNorm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nncert_torch import idx, load

torch.set_default_dtype(torch.float64)
model_path, images_path, labels_path, norm, eps, box, count = sys.argv[1:8]
eps, count = float(eps), int(count)
net, _ = load(model_path)

images = idx(images_path).reshape(-1, 784).astype(np.float64) / 255.0
labels = idx(labels_path)
x0 = torch.zeros(1, 784, dtype=torch.float64)
bounded = BoundedModule(net, x0, device="cpu")
out = []
for i in range(count):
    x = torch.tensor(images[i:i + 1])
    label = int(labels[i])
    classes = net(x).shape[1]
    if int(net(x).argmax()) != label:
        continue
    targets = [c for c in range(classes) if c != label]
    C = torch.zeros(1, len(targets), classes, dtype=torch.float64)
    for k, t in enumerate(targets):
        C[0, k, label] = 1.0
        C[0, k, t] = -1.0
    p = float("inf") if norm == "linf" else 2.0
    if box == "none":
        ptb = PerturbationLpNorm(norm=p, eps=eps)
    else:
        lo, hi = (float(v) for v in box.split(","))
        ptb = PerturbationLpNorm(norm=p, eps=eps, x_L=torch.clamp(x - eps, lo, hi) if p == float("inf") else torch.full_like(x, lo), x_U=torch.clamp(x + eps, lo, hi) if p == float("inf") else torch.full_like(x, hi))
    lb, _ = bounded.compute_bounds(x=(BoundedTensor(x, ptb),), C=C, method="CROWN")
    lower = [None] * classes
    for k, t in enumerate(targets):
        lower[t] = float(lb[0, k])
    out.append({"index": i, "label": label, "lower": lower})
json.dump({"model": model_path.split("/")[-1], "norm": norm, "eps": eps, "box": box, "images": out}, sys.stdout)
