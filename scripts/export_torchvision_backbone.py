#!/usr/bin/python3
"""Exports a torchvision architecture as a TorchScript backbone for tlserve.

The classifier layer (fc / classifier) becomes torch.nn.Identity, so the
saved module maps [N, 3, size, size] floats (normalised with ImageNet
mean/std by the classifier tlserve builds around it) to [N, D] features.
Writes <out> and <out>.json (the input spec the UploadBackbone call needs)
and prints the feature dimension.

Nothing is downloaded: --weights random (the default) gives a randomly
initialised network, which is what test fixtures need; --weights imagenet
uses torchvision's pretrained weights when they are already in the torch
hub cache.

Run with /usr/bin/python3 (Debian's python3-torch/python3-torchvision):
  /usr/bin/python3 scripts/export_torchvision_backbone.py \
      --arch resnet18 --size 64 --out /tmp/resnet18.pt
"""

import argparse
import json
import sys

import torch
import torchvision

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def build(arch: str, weights: str) -> torch.nn.Module:
    if not hasattr(torchvision.models, arch):
        sys.exit(f"unknown torchvision architecture '{arch}'")
    kwargs = {"weights": "DEFAULT"} if weights == "imagenet" else {"weights": None}
    model = getattr(torchvision.models, arch)(**kwargs)
    if hasattr(model, "fc") and isinstance(model.fc, torch.nn.Module):
        model.fc = torch.nn.Identity()
    elif hasattr(model, "classifier"):
        model.classifier = torch.nn.Identity()
    elif hasattr(model, "head"):
        model.head = torch.nn.Identity()
    else:
        sys.exit(f"'{arch}' has no fc, classifier or head layer to replace")
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--out", required=True)
    parser.add_argument("--weights", choices=["random", "imagenet"],
                        default="random")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model = build(args.arch, args.weights)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        features = scripted(torch.zeros(1, 3, args.size, args.size))
    if features.dim() != 2:
        sys.exit(f"'{args.arch}' gives {tuple(features.shape)} features, not [N, D]")
    scripted.save(args.out)
    spec = {
        "channels": 3,
        "height": args.size,
        "width": args.size,
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
    }
    with open(args.out + ".json", "w") as f:
        json.dump(spec, f, indent=2)
        f.write("\n")
    print(features.shape[1])


if __name__ == "__main__":
    main()
