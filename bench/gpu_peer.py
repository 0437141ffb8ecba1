#!/usr/bin/python3
"""The peer of the GPU benchmark (issue 8): PyTorch in Python.

The peer uses the same GPU, model, batch, precision and data as the
tlserve GPU worker. It measures what the issue's goals compare against,
on torchvision's resnet50 at 224x224, batch 256, bf16 autocast (the
defaults):

  finetune  a full fine-tune step on inputs already on the GPU: forward,
            cross-entropy, backward, SGD with momentum. It runs eagerly,
            and with --compile also under torch.compile where this torch
            has it. Reports images per second.
  frozen    a frozen backbone and a trained Linear head, fed JPEG bytes
            by a standard DataLoader: PIL decode, resize, centre crop,
            ToTensor and Normalize in --workers processes, with pinned
            memory and non-blocking copies. Reports images per second
            including decoding.

Each mode's images are Fashion-MNIST test images, made RGB and resized to
--size, then JPEG-encoded at quality 90 (as bench/run_inference_bench.sh
makes them), so both sides decode the same bytes.

  /usr/bin/python3 bench/gpu_peer.py --mode finetune --compile
  /usr/bin/python3 bench/gpu_peer.py --mode frozen --workers 8

One `RESULT {json}` line per measurement. With --device cpu and small
sizes it runs anywhere, to check the script itself:

  /usr/bin/python3 bench/gpu_peer.py --device cpu --arch resnet18 \\
      --size 64 --batch 8 --steps 2 --warmup 1
"""
import argparse
import gzip
import io
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def jpeg_images(args):
    """(list of JPEG bytes, labels): Fashion-MNIST test images at --size."""
    images = read_idx(f"{args.data_dir}/t10k-images-idx3-ubyte.gz")
    labels = read_idx(f"{args.data_dir}/t10k-labels-idx1-ubyte.gz")
    count = min(args.images, len(images))
    out = []
    for i in range(count):
        img = Image.fromarray(images[i]).resize((args.size, args.size), Image.BILINEAR)
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out, labels[:count].astype(np.int64)


class JpegDataset(torch.utils.data.Dataset):
    """What a team would write: decode and transform in __getitem__."""

    def __init__(self, jpegs, labels, size):
        self.jpegs, self.labels = jpegs, labels
        T = torchvision.transforms
        self.transform = T.Compose([
            T.Resize(size * 8 // 7), T.CenterCrop(size), T.ToTensor(),
            T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])

    def __len__(self):
        return len(self.jpegs)

    def __getitem__(self, i):
        img = Image.open(io.BytesIO(self.jpegs[i])).convert("RGB")
        return self.transform(img), int(self.labels[i])


def make_model(args, device):
    model = getattr(torchvision.models, args.arch)(num_classes=args.classes)
    model = model.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def autocast(args, device):
    if args.precision == "fp32":
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def result(args, device, **fields):
    line = {"tool": "gpu_peer", "arch": args.arch, "size": args.size,
            "batch": args.batch, "precision": args.precision,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__}
    line.update(fields)
    print("RESULT " + json.dumps(line), flush=True)


def finetune(args, device, compiled):
    torch.manual_seed(args.seed)
    model = make_model(args, device)
    model.train()
    step_model = model
    if compiled:
        if not hasattr(torch, "compile"):
            result(args, device, mode="finetune", compile=True,
                   skipped=f"torch {torch.__version__} has no torch.compile")
            return
        step_model = torch.compile(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    x = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(
        memory_format=memory_format)
    y = torch.randint(0, args.classes, (args.batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast(args, device):
            loss = F.cross_entropy(step_model(x), y)
        loss.backward()
        opt.step()
        return loss

    for _ in range(args.warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync(device)
    seconds = time.perf_counter() - start
    result(args, device, mode="finetune", compile=compiled,
           images_per_second=args.steps * args.batch / seconds,
           seconds_per_step=seconds / args.steps, loss=float(loss))


def frozen(args, device):
    torch.manual_seed(args.seed)
    jpegs, labels = jpeg_images(args)
    model = make_model(args, device)
    head = torch.nn.Linear(model.fc.in_features, args.classes).to(device)
    model.fc = torch.nn.Identity()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    opt = torch.optim.SGD(head.parameters(), lr=0.01, momentum=0.9)
    loader = torch.utils.data.DataLoader(
        JpegDataset(jpegs, labels, args.size), batch_size=args.batch,
        shuffle=True, num_workers=args.workers, drop_last=True,
        pin_memory=device.type == "cuda", persistent_workers=args.workers > 0)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format

    def run(steps):
        done = 0
        while done < steps:
            for x, y in loader:
                x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
                y = y.to(device, non_blocking=True)
                with autocast(args, device):
                    with torch.no_grad():
                        features = model(x)
                    loss = F.cross_entropy(head(features.float()), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                done += 1
                if done == steps:
                    break
        return loss

    run(args.warmup)
    sync(device)
    start = time.perf_counter()
    loss = run(args.steps)
    sync(device)
    seconds = time.perf_counter() - start
    result(args, device, mode="frozen", compile=False, workers=args.workers,
           images_per_second=args.steps * args.batch / seconds,
           seconds_per_step=seconds / args.steps, loss=float(loss),
           distinct_images=len(jpegs))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=["finetune", "frozen", "both"], default="both")
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--compile", action="store_true",
                    help="also time the fine-tune under torch.compile")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--workers", type=int, default=8, help="DataLoader processes (frozen)")
    ap.add_argument("--images", type=int, default=10000, help="distinct JPEGs (frozen)")
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.batch < 1 or args.steps < 1 or args.warmup < 0 or args.size < 32:
        ap.error("--batch and --steps must be >= 1, --warmup >= 0, --size >= 32")
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            ap.error("--device cuda: no CUDA device is visible to this torch")
        torch.backends.cudnn.benchmark = True
    if args.mode in ("frozen", "both") and args.images < args.batch:
        ap.error("--images must be at least --batch")
    if args.mode in ("finetune", "both"):
        finetune(args, device, compiled=False)
        if args.compile:
            finetune(args, device, compiled=True)
    if args.mode in ("frozen", "both"):
        frozen(args, device)


if __name__ == "__main__":
    main()
