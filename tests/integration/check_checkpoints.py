#!/usr/bin/python3
"""Loads stored checkpoints and models with PyTorch, a reader independent of
the worker's own code: exits 1 naming each file that does not load, lacks
a field, or holds a tensor that is not finite.

Arguments: checkpoint=PATH (a worker checkpoint archive) or model=PATH (an
exported TorchScript model), any number of each.
"""

import sys

import torch


def check_checkpoint(path):
    archive = torch.jit.load(path, map_location="cpu")
    fmt = getattr(archive, "format")
    if not isinstance(fmt, str) or not fmt:
        raise ValueError(f"format is {fmt!r}")
    epoch = getattr(archive, "epoch")
    batch = getattr(archive, "batch")
    if epoch < 0 or batch < 0:
        raise ValueError(f"cursor at epoch {epoch}, batch {batch}")
    state = getattr(archive, "model")
    if not state:
        raise ValueError("no model tensors")
    for name, tensor in state.items():
        if not torch.isfinite(tensor).all():
            raise ValueError(f"tensor {name} is not finite")
    # The optimizer's state is a nested archive (a submodule).
    getattr(archive, "optimizer")
    return f"epoch {epoch} batch {batch}, {len(state)} tensors"


def check_model(path):
    model = torch.jit.load(path, map_location="cpu")
    tensors = 0
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"tensor {name} is not finite")
        tensors += 1
    return f"{tensors} tensors"


def main(args):
    failed = 0
    for arg in args:
        kind, _, path = arg.partition("=")
        check = {"checkpoint": check_checkpoint, "model": check_model}.get(kind)
        if check is None:
            print(f"bad argument {arg!r}: want checkpoint=PATH or model=PATH")
            return 2
        try:
            print(f"ok {kind} {path}: {check(path)}")
        except Exception as e:  # Any failure to read is what we look for.
            print(f"FAILED {kind} {path}: {type(e).__name__}: {e}")
            failed += 1
    print(f"{len(args) - failed} of {len(args)} load")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
