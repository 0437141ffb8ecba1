#!/usr/bin/python3
"""The peer for bench/fine_tune_speed: the same fine-tune in plain PyTorch.

A straightforward PyTorch training script, as a user would write it: the
same TorchScript backbone, a Linear head, the same normalisation, AdamW at
the same rates (backbone at --backbone-lr-scale of the head), cosine
schedule, the same batch size, epochs and thread count, validation each
epoch and a test pass at the end. Frozen means requires_grad=False on the
backbone and the backbone in eval mode; it still runs the backbone every
epoch, which is what scripts without a feature cache do.

Prints one JSON line: {"seconds": ..., "test_accuracy": ...}.
"""
import argparse
import gzip
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def take_per_class(labels, per_class, rng):
    picked = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        picked.extend(idx[:per_class].tolist())
    return np.array(sorted(picked))


def to_input(images, size):
    # uint8 [N, 28, 28] -> float [N, 3, size, size] in [0, 1].
    x = torch.from_numpy(images.copy()).float().div_(255).unsqueeze(1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.expand(-1, 3, -1, -1).contiguous()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--backbone", required=True)
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--mode", choices=["frozen", "last_block", "full"], required=True)
    p.add_argument("--last-block", default="layer4")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--per-class", type=int, default=200)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--backbone-lr-scale", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    start = time.monotonic()

    train_x = read_idx(f"{a.data_dir}/train-images-idx3-ubyte.gz")
    train_y = read_idx(f"{a.data_dir}/train-labels-idx1-ubyte.gz")
    test_x = read_idx(f"{a.data_dir}/t10k-images-idx3-ubyte.gz")
    test_y = read_idx(f"{a.data_dir}/t10k-labels-idx1-ubyte.gz")
    keep = take_per_class(train_y, a.per_class, rng)
    rng.shuffle(keep)
    n_val = int(round(len(keep) * a.val_fraction))
    val_idx, train_idx = keep[:n_val], keep[n_val:]
    test_idx = rng.choice(len(test_y), size=a.test, replace=False)
    xs = {k: to_input(train_x[i] if k != "test" else test_x[i], a.size)
          for k, i in (("train", train_idx), ("val", val_idx), ("test", test_idx))}
    ys = {"train": torch.from_numpy(train_y[train_idx].astype(np.int64)),
          "val": torch.from_numpy(train_y[val_idx].astype(np.int64)),
          "test": torch.from_numpy(test_y[test_idx].astype(np.int64))}

    backbone = torch.jit.load(a.backbone)
    with torch.no_grad():
        dim = backbone(torch.zeros(1, 3, a.size, a.size)).shape[1]
    head = torch.nn.Linear(dim, 10)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    for prm in backbone.parameters():
        prm.requires_grad_(a.mode == "full")
    backbone_params = []
    if a.mode == "last_block":
        block = getattr(backbone, a.last_block)
        for prm in block.parameters():
            prm.requires_grad_(True)
        backbone_params = list(block.parameters())
    elif a.mode == "full":
        backbone_params = list(backbone.parameters())
    groups = [{"params": head.parameters(), "lr": a.lr}]
    if backbone_params:
        groups.append({"params": backbone_params, "lr": a.lr * a.backbone_lr_scale})
    opt = torch.optim.AdamW(groups, lr=a.lr, weight_decay=0)
    base = [g["lr"] for g in opt.param_groups]

    def forward(x):
        return head(backbone((x - mean) / std))

    def evaluate(split):
        backbone.eval()
        head.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(ys[split]), 256):
                logits = forward(xs[split][i:i + 256])
                correct += (logits.argmax(1) == ys[split][i:i + 256]).sum().item()
        return correct / max(1, len(ys[split]))

    n = len(ys["train"])
    steps = (n + a.batch_size - 1) // a.batch_size
    total = steps * a.epochs
    step = 0
    phases = {"setup": time.monotonic() - start, "epochs": []}
    for epoch in range(a.epochs):
        epoch_start = time.monotonic()
        backbone.train(a.mode == "full")
        if a.mode == "last_block":
            getattr(backbone, a.last_block).train()
        head.train()
        order = torch.randperm(n)
        for b in range(steps):
            idx = order[b * a.batch_size:(b + 1) * a.batch_size]
            if len(idx) < 2:
                continue
            factor = 0.5 * (1 + math.cos(math.pi * step / total))
            for g, lr in zip(opt.param_groups, base):
                g["lr"] = lr * factor
            opt.zero_grad()
            loss = F.cross_entropy(forward(xs["train"][idx]), ys["train"][idx])
            loss.backward()
            opt.step()
            step += 1
        evaluate("val")
        phases["epochs"].append(round(time.monotonic() - epoch_start, 3))
    test_start = time.monotonic()
    acc = evaluate("test")
    phases["test"] = round(time.monotonic() - test_start, 3)
    print(json.dumps({"seconds": time.monotonic() - start, "test_accuracy": acc,
                      "phases": phases}))


if __name__ == "__main__":
    main()
