#!/usr/bin/python3
"""Exports a torchvision architecture as a TorchScript backbone for tlserve.

The saved module maps [N, 3, size, size] floats (normalised with ImageNet
mean/std by the classifier tlserve builds around it) to [N, D] features, in
training and in eval mode. Writes <out> and <out>.json (the InputSpec that
`tlctl backbone upload --spec-json` reads) and prints D.

Nothing is downloaded: the weights are random (seeded by --seed) unless
--weights FILE names a state_dict saved by torch.save for the full
torchvision model, classification head included (e.g. a file from
~/.cache/torch/hub/checkpoints/ copied from a machine with internet).

Where the classification head goes (what D is):
  resnet*, resnext*, wide_resnet*, regnet*, googlenet, inception_v3,
  shufflenet*: `fc` becomes Identity (resnet18 512, resnet50 2048,
  inception_v3 2048);
  mobilenet_v2/v3, efficientnet*, mnasnet*, densenet*, vgg*, alexnet: the
  whole `classifier` becomes Identity, so D is the pooled and flattened
  output of `features` (mobilenet_v2 1280, mobilenet_v3_small 576,
  efficientnet_b0 1280, densenet121 1024, vgg 512*7*7 = 25088). For vgg
  this drops the two hidden 4096-wide Linear layers too: they hold 120M of
  vgg11_bn's 129M parameters (a 500 MB file), their random weights carry
  nothing, and cutting there keeps `features` the container whose
  children tlserve freezes block by block. mobilenet_v3 loses its hidden
  Linear the same way;
  convnext*: only the last Linear of `classifier` (LayerNorm and flatten
  stay); vit*: `heads`; swin*: `head`.
tlserve's tests (tests/worker/torchvision_backbones_test.cc) export and
fine-tune resnet18, resnet50, mobilenet_v2, mobilenet_v3_small,
efficientnet_b0, vgg11_bn, densenet121 and inception_v3; the other
architectures are best effort.

inception_v3 and googlenet are exported without auxiliary classifiers, and
their forward returns the feature tensor alone (the scripted torchvision
forward always returns a named tuple). inception_v3 needs --size >= 75.

With random weights, the BatchNorm running statistics are set from
--calibration-batches batches of uniform noise (normalised like tlserve's
inputs) before export. The defaults (mean 0, variance 1) do not fit random
weights: in eval mode, as frozen blocks run while tlserve fine-tunes, the
features of a random mobilenet_v2 or efficientnet_b0 shrink to about 1e-9
and the last block gets no usable gradient.

Modules are compiled with torch.jit.script; when that fails (or with
--method trace) they are traced in eval mode, which bakes eval behaviour
into the graph: BatchNorm then uses running statistics and dropout is off
even while tlserve fine-tunes.

Run with /usr/bin/python3 (Debian's python3-torch/python3-torchvision):
  /usr/bin/python3 tools/export_backbone.py --arch resnet18 --size 64 \\
      --out /tmp/resnet18.pt
"""

import argparse
import json
import sys
from typing import Optional, Tuple

import torch
import torchvision
from torch import Tensor, nn

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
MIN_SIZE = {"inception_v3": 75}


class Inception3Backbone(torchvision.models.Inception3):
    """Inception3 whose forward returns the [N, D] features only."""

    def forward(self, x: Tensor) -> Tensor:
        x = self._transform_input(x)
        features, _ = self._forward(x)
        return features


class GoogLeNetBackbone(torchvision.models.GoogLeNet):
    """GoogLeNet whose forward returns the [N, D] features only."""

    def forward(self, x: Tensor) -> Tensor:
        x = self._transform_input(x)
        out: Tuple[Tensor, Optional[Tensor], Optional[Tensor]] = self._forward(x)
        return out[0]


def fail(message: str) -> None:
    sys.exit(f"export_backbone.py: {message}")


def load_state_dict(path: str) -> dict:
    state = torch.load(path, map_location="cpu")
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        fail(f"--weights {path} holds a {type(state).__name__}, not a state_dict")
    return state


def build(arch: str, weights: Optional[str]) -> nn.Module:
    """The full torchvision model with its weights, head still in place."""
    if arch.startswith("_") or not callable(getattr(torchvision.models, arch, None)):
        fail(f"unknown torchvision architecture '{arch}'")
    state = load_state_dict(weights) if weights else None
    kwargs = {"weights": None}
    if arch in ("inception_v3", "googlenet"):
        # The auxiliary classifiers exist only if the state_dict has them.
        has_aux = state is not None and any(k.startswith("aux") or
                                            k.startswith("AuxLogits")
                                            for k in state)
        kwargs.update(aux_logits=has_aux, init_weights=state is None)
    model = getattr(torchvision.models, arch)(**kwargs)
    if not isinstance(model, nn.Module):
        fail(f"torchvision.models.{arch} is not a model constructor")
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            fail(f"--weights {weights} does not fit {arch}: {e}")
    if isinstance(model, torchvision.models.Inception3):
        model.aux_logits = False
        model.AuxLogits = None
        model.__class__ = Inception3Backbone
    elif isinstance(model, torchvision.models.GoogLeNet):
        model.aux_logits = False
        model.aux1 = None
        model.aux2 = None
        model.__class__ = GoogLeNetBackbone
    return model


def strip_head(model: nn.Module, arch: str) -> None:
    """Replaces the classification head with Identity (see the module doc)."""
    classifier = getattr(model, "classifier", None)
    if isinstance(getattr(model, "fc", None), nn.Linear):
        model.fc = nn.Identity()
    elif isinstance(classifier, nn.Sequential) and any(
            isinstance(m, nn.Flatten) for m in classifier):
        # convnext: norm and flatten are part of the feature path.
        last = [i for i, m in enumerate(classifier) if isinstance(m, nn.Linear)]
        classifier[last[-1]] = nn.Identity()
    elif isinstance(classifier, nn.Module):
        model.classifier = nn.Identity()
    elif isinstance(getattr(model, "heads", None), nn.Module):
        model.heads = nn.Identity()
    elif isinstance(getattr(model, "head", None), nn.Module):
        model.head = nn.Identity()
    else:
        fail(f"'{arch}' has no fc, classifier or head layer to replace")


def calibrate_batch_norm(model: nn.Module, size: int, batches: int) -> None:
    """Running statistics of every BatchNorm = averages over `batches`."""
    norms = [m for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or batches <= 0:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model((torch.rand(8, 3, size, size) - mean) / std)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


def compile_module(model: nn.Module, example: Tensor, method: str):
    if method in ("auto", "script"):
        try:
            return torch.jit.script(model), "script"
        except Exception as e:  # TorchScript raises several error types.
            if method == "script":
                fail(f"torch.jit.script failed: {e}")
            print(f"torch.jit.script failed ({str(e).splitlines()[0]}); "
                  "tracing in eval mode instead", file=sys.stderr)
    return torch.jit.trace(model, example), "trace"


def check_features(module, x: Tensor, what: str) -> int:
    # Without graph optimisation a first forward of a scripted module costs
    # what the eager one does, not seconds of profiling and fusion.
    with torch.no_grad(), torch.jit.optimized_execution(False):
        try:
            out = module(x)
        except Exception as e:
            fail(f"{what} on a {list(x.shape)} input failed: {e}")
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
        shape = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
        fail(f"{what} returns {shape}, not [N, D]")
    return out.shape[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnet18",
                        help="a torchvision.models constructor name")
    parser.add_argument("--size", type=int, default=224,
                        help="input height and width (default 224)")
    parser.add_argument("--out", required=True, help="the .pt file to write")
    parser.add_argument("--weights", default="random",
                        help="'random' (default) or a state_dict file")
    parser.add_argument("--method", choices=["auto", "script", "trace"],
                        default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fit", choices=["stretch", "center-crop"],
                        default="stretch",
                        help="how images become size x size: stretched "
                        "whole (default), or the shorter side resized to "
                        "--shorter-side and the centre cut, as torchvision's "
                        "ImageNet evaluation transform")
    parser.add_argument("--shorter-side", type=int, default=0,
                        help="center-crop: the shorter side before the crop "
                        "(0: size * 8/7, 256 for 224)")
    parser.add_argument("--calibration-batches", type=int, default=4,
                        help="noise batches that set BatchNorm statistics "
                        "of random weights (0: keep mean 0, variance 1)")
    args = parser.parse_args()
    if args.shorter_side and (args.fit != "center-crop"
                              or args.shorter_side < args.size):
        fail(f"--shorter-side {args.shorter_side} needs --fit center-crop "
             f"and at least --size {args.size}")
    if args.size < MIN_SIZE.get(args.arch, 1) or args.size > 4096:
        fail(f"--size {args.size} is outside [{MIN_SIZE.get(args.arch, 1)}, "
             f"4096] for {args.arch}")

    torch.manual_seed(args.seed)
    model = build(args.arch, None if args.weights == "random" else args.weights)
    strip_head(model, args.arch)
    if args.weights == "random":
        calibrate_batch_norm(model, args.size, args.calibration_batches)
    model.eval()
    example = torch.zeros(2, 3, args.size, args.size)
    check_features(model, example, f"'{args.arch}' at size {args.size}")
    module, how = compile_module(model, example, args.method)
    module.save(args.out)

    # The file as tlserve will see it: eval and train mode give [N, D].
    loaded = torch.jit.load(args.out)
    loaded.eval()
    dim = check_features(loaded, example, f"the exported {how}d module (eval)")
    loaded.train()
    check_features(loaded, torch.rand(2, 3, args.size, args.size),
                   f"the exported {how}d module (train)")

    spec = {
        "channels": 3,
        "height": args.size,
        "width": args.size,
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
    }
    if args.fit == "center-crop":
        spec["fit"] = {"mode": "RESIZE_CENTER_CROP",
                       "shorterSide": args.shorter_side}
    with open(args.out + ".json", "w") as f:
        json.dump(spec, f, indent=2)
        f.write("\n")
    print(dim)


if __name__ == "__main__":
    main()
