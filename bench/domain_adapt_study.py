#!/usr/bin/python3
"""Does DOMAIN_ADAPT (DANN) help on a real shift? Source-only against DANN.

Source domain: Fashion-MNIST as it is, labelled. Target domain: other
Fashion-MNIST images with every pixel inverted (255 - x), the same ten
classes; the target's training labels are never read, its test labels only
measure the result. Both arms start from the same compact ResNet that a
PRETRAIN job trains on the source, and run the same DOMAIN_ADAPT pipeline;
the baseline has domain_loss_weight 0 (source only: the backbone never sees
a target image), DANN the default weight 1. Test accuracy on the target's
test split, per seed, then mean and spread.

Usage (starts its own tlserve with one local worker on loopback):
  bench/domain_adapt_study.py [--build_dir build] [--seeds 1,2,3]
      [--per_class 500] [--epochs 5] [--out var/domain_adapt]
"""

import argparse
import gzip
import json
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time

from study_server import start_server, stop_server, wait

FMNIST = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
               "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return dims, data[4 + 4 * ndim:]


def write_idx(path, dims, payload):
    with open(path, "wb") as f:
        f.write(bytes([0, 0, 8, len(dims)]))
        f.write(struct.pack(">" + "I" * len(dims), *dims))
        f.write(payload)


def write_domain(out_dir, split, per_class, skip, invert):
    """The first `per_class` images of each class after skipping `skip`."""
    dims, images = read_idx(f"{FMNIST}/{split}-images-idx3-ubyte.gz")
    _, labels = read_idx(f"{FMNIST}/{split}-labels-idx1-ubyte.gz")
    pixels = dims[1] * dims[2]
    seen, taken = [0] * 10, [0] * 10
    out_images, out_labels = bytearray(), bytearray()
    for i, label in enumerate(labels):
        if seen[label] < skip:
            seen[label] += 1
            continue
        if taken[label] >= per_class:
            continue
        taken[label] += 1
        image = images[i * pixels:(i + 1) * pixels]
        out_images += bytes(255 - p for p in image) if invert else image
        out_labels.append(label)
    n = len(out_labels)
    write_idx(f"{out_dir}/{split}-images-idx3-ubyte", (n, dims[1], dims[2]), out_images)
    write_idx(f"{out_dir}/{split}-labels-idx1-ubyte", (n,), out_labels)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build_dir", default="build")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--per_class", type=int, default=500)
    parser.add_argument("--test_per_class", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", default="var/domain_adapt")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    build_dir = os.path.abspath(args.build_dir)
    sys.path.insert(0, os.path.join(build_dir, "python"))
    from tlserve_client import Client  # noqa: E402 (built into build/python)

    if not os.path.isdir(FMNIST):
        print(f"SKIP: {FMNIST} is missing (Debian: dataset-fashion-mnist)")
        return 77
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="domain_adapt_")
    # The target's images are others than the source's, in both splits.
    for name, invert in (("source", False), ("target", True)):
        os.makedirs(f"{work}/{name}")
        write_domain(f"{work}/{name}", "train", args.per_class,
                     args.per_class if invert else 0, invert)
        write_domain(f"{work}/{name}", "t10k", args.test_per_class,
                     args.test_per_class if invert else 0, invert)
    server, address = start_server(build_dir, work)
    started = time.monotonic()
    rows = []
    try:
        client = Client(address, timeout=60)
        client.wait_until_ready(60)
        source = client.upload_dataset(f"{work}/source", "fmnist-source",
                                       class_names=CLASS_NAMES)
        target = client.upload_dataset(f"{work}/target", "fmnist-inverted",
                                       class_names=CLASS_NAMES)
        pretrain = wait(client, client.create_job(
            kind="PRETRAIN", display_name="source-resnet",
            data={"dataset_id": source.id, "validation_fraction": 0.1},
            optimizer={"kind": "ADAMW", "learning_rate": 2e-3, "weight_decay": 1e-4},
            schedule={"kind": "COSINE"}, epochs=3, batch_size=64, seed=1,
            pretrain={"backbone_name": "fmnist-source"}))
        backbone = pretrain.result.backbone_id
        print(f"source backbone {backbone}: source test accuracy "
              f"{pretrain.result.test_accuracy:.3f}", file=sys.stderr)
        for seed in seeds:
            for arm, weight in (("source_only", 0.0), ("dann", 1.0)):
                job = wait(client, client.create_job(
                    kind="DOMAIN_ADAPT", display_name=f"{arm}-seed{seed}",
                    backbone_id=backbone,
                    data={"dataset_id": source.id, "validation_fraction": 0.1},
                    freeze={"mode": "FULL", "backbone_lr_scale": 1.0},
                    optimizer={"kind": "ADAMW", "learning_rate": 1e-3,
                               "weight_decay": 1e-4},
                    schedule={"kind": "COSINE"}, epochs=args.epochs, batch_size=64,
                    seed=seed,
                    domain_adapt={"target_dataset_id": target.id,
                                  "domain_loss_weight": weight}))
                last = job.metrics[-1]
                rows.append({"seed": seed, "arm": arm,
                             "target_test_accuracy": job.result.test_accuracy,
                             "source_test_accuracy": job.result.source_test_accuracy,
                             "final_domain_accuracy": last.domain_accuracy,
                             "seconds": job.result.train_seconds})
                print(f"seed {seed} {arm}: target {job.result.test_accuracy:.4f}, "
                      f"source {job.result.source_test_accuracy:.4f}, "
                      f"{job.result.train_seconds:.0f} s", file=sys.stderr)
    finally:
        stop_server(server)
        shutil.rmtree(work, ignore_errors=True)

    def cell(values):
        return f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}"

    print(f"\nsource: Fashion-MNIST, {args.per_class} labelled images per class; "
          f"target: other images inverted, {args.per_class} unlabelled per class, "
          f"{args.test_per_class} labelled test per class; {args.epochs} epochs; "
          f"seeds {seeds}; {time.monotonic() - started:.0f} s in all\n")
    print("| arm | target test accuracy | source test accuracy | domain classifier "
          "accuracy, last epoch | seconds per job |")
    print("|---|---|---|---|---|")
    for arm in ("source_only", "dann"):
        mine = [r for r in rows if r["arm"] == arm]
        domain = cell([r["final_domain_accuracy"] for r in mine]) if arm == "dann" else "-"
        print(f"| {arm} | {cell([r['target_test_accuracy'] for r in mine])} "
              f"| {cell([r['source_test_accuracy'] for r in mine])} | {domain} "
              f"| {statistics.mean(r['seconds'] for r in mine):.0f} |")
    gains = [d["target_test_accuracy"] - s["target_test_accuracy"]
             for s, d in zip([r for r in rows if r["arm"] == "source_only"],
                             [r for r in rows if r["arm"] == "dann"])]
    print(f"\nDANN minus source-only on the target, per seed: "
          f"{', '.join(f'{100 * g:+.1f}' for g in gains)} points")
    with open(os.path.join(args.out, "domain_adapt.json"), "w") as f:
        json.dump({"rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
