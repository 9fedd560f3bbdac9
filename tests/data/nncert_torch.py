"""Helpers shared by the scripts that run auto_LiRPA beside nncert (tests/data/auto_lirpa_crown.py,
benches/auto_lirpa_time.py): nncert's JSON model format as a float64 torch model, and the IDX files
of MNIST.
"""
import json, struct
import numpy as np
import torch


def load(path):
    """The JSON model at `path` (dense, conv2d and flatten layers; ReLU or no activation) as a
    float64 torch.nn.Sequential, with the model's input shape ([784] when it names none)."""
    with open(path) as f:
        spec = json.load(f)
    mods = []
    for l in spec["layers"]:
        if l["type"] == "flatten":
            mods.append(torch.nn.Flatten())
            continue
        w = torch.tensor(l["weight"], dtype=torch.float64)
        if l["type"] == "conv2d":
            m = torch.nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), stride=tuple(l["stride"]), padding=tuple(l["padding"]))
        else:
            m = torch.nn.Linear(w.shape[1], w.shape[0])
        m.weight.data = w
        m.bias.data = torch.tensor(l["bias"], dtype=torch.float64)
        mods.append(m)
        act = l.get("activation", "none")
        if act == "relu":
            mods.append(torch.nn.ReLU())
        elif act not in ("none", "identity", "linear"):
            raise SystemExit(f"unsupported activation {act}")
    return torch.nn.Sequential(*mods).double(), spec.get("input_shape", [784])


def idx(path):
    """The array in the IDX file at `path` (MNIST's images or labels), as uint8."""
    with open(path, "rb") as f:
        raw = f.read()
    dims = struct.unpack(">I", raw[:4])[0] & 0xFF
    shape = struct.unpack(">" + "I" * dims, raw[4:4 + 4 * dims])
    return np.frombuffer(raw[4 + 4 * dims:], dtype=np.uint8).reshape(shape)
