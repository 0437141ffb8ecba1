#!/usr/bin/python3
"""Do two heads trained together beat one head each? Multitask against single-task.

On Fashion-MNIST with few labels, the ten classes ("fine") and a coarse
grouping of them (tops: T-shirt, Pullover, Dress, Coat, Shirt; footwear:
Sandal, Sneaker, Ankle boot; other: Trouser, Bag). Every arm starts from
the same compact ResNet that a PRETRAIN job trains on 1000 images each of
five classes (0, 1, 5, 8, 9), and fine-tunes all of it (the backbone at a
tenth of the head's rate) on the same `--shots` labelled images per class,
drawn from images the pretraining never saw:

  fine       FINE_TUNE on the ten classes (its coarse accuracy is read off
             its confusion matrix: a fine answer in the right group counts);
  coarse     FINE_TUNE on the same images labelled with their group;
  multitask  one MULTITASK job: the fine head and a coarse head, loss
             weights 1 and 1, one model.

A head on a frozen backbone learns nothing from another head, so only a
backbone that trains can share what the tasks teach. Test accuracy of each
head on 500 test images per class, per seed, then mean and spread.

Usage (starts its own tlserve with one local worker on loopback):
  bench/multitask_study.py [--build_dir build] [--seeds 1,2,3]
      [--shots 20] [--epochs 15] [--out var/multitask]
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
COARSE_NAMES = ["tops", "footwear", "other"]
COARSE_OF = [0, 2, 0, 0, 0, 1, 0, 1, 2, 1]
SOURCE = [0, 1, 5, 8, 9]
SOURCE_PER_CLASS = 1000


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


def write_split(out_dir, split, per_class, skip, coarse):
    """The first `per_class` images of each class after skipping `skip`,
    labelled with their class or (coarse) their group."""
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
        out_images += images[i * pixels:(i + 1) * pixels]
        out_labels.append(COARSE_OF[label] if coarse else label)
    n = len(out_labels)
    write_idx(f"{out_dir}/{split}-images-idx3-ubyte", (n, dims[1], dims[2]), out_images)
    write_idx(f"{out_dir}/{split}-labels-idx1-ubyte", (n,), out_labels)


def coarse_from_confusion(confusion):
    """Accuracy of a ten-class model's answers read as groups."""
    hits = total = 0
    for t in range(10):
        for p in range(10):
            n = confusion[t * 10 + p]
            total += n
            hits += n if COARSE_OF[t] == COARSE_OF[p] else 0
    return hits / total if total else 0.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build_dir", default="build")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--shots", type=int, default=20)
    parser.add_argument("--test_per_class", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", default="var/multitask")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    build_dir = os.path.abspath(args.build_dir)
    sys.path.insert(0, os.path.join(build_dir, "python"))
    from tlserve_client import Client  # noqa: E402 (built into build/python)

    if not os.path.isdir(FMNIST):
        print(f"SKIP: {FMNIST} is missing (Debian: dataset-fashion-mnist)")
        return 77
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="multitask_")
    for name, coarse in (("fine", False), ("coarse", True)):
        os.makedirs(f"{work}/{name}")
        # Images after the ones pretraining takes, the same for both.
        write_split(f"{work}/{name}", "train", args.shots, SOURCE_PER_CLASS, coarse)
        write_split(f"{work}/{name}", "t10k", args.test_per_class, 0, coarse)
    server, address = start_server(build_dir, work)
    started = time.monotonic()
    rows = []
    try:
        client = Client(address, timeout=60)
        client.wait_until_ready(60)
        full = client.upload_dataset(FMNIST, "fashion-mnist", class_names=CLASS_NAMES)
        fine = client.upload_dataset(f"{work}/fine", "fmnist-few",
                                     class_names=CLASS_NAMES)
        coarse = client.upload_dataset(f"{work}/coarse", "fmnist-few-coarse",
                                       class_names=COARSE_NAMES)
        pretrain = wait(client, client.create_job(
            kind="PRETRAIN", display_name="source-resnet",
            data={"dataset_id": full.id, "class_subset": SOURCE,
                  "samples_per_class": SOURCE_PER_CLASS, "validation_fraction": 0.1},
            optimizer={"kind": "ADAMW", "learning_rate": 2e-3, "weight_decay": 1e-4},
            schedule={"kind": "COSINE"}, epochs=3, batch_size=64, seed=1,
            pretrain={"backbone_name": "fmnist-five"}))
        backbone = pretrain.result.backbone_id
        print(f"source backbone {backbone}: source test accuracy "
              f"{pretrain.result.test_accuracy:.3f}", file=sys.stderr)

        def spec(kind, dataset_id, name, seed, **extra):
            return dict(
                kind=kind, display_name=name, backbone_id=backbone,
                data={"dataset_id": dataset_id, "validation_fraction": 0.1},
                freeze={"mode": "FULL", "backbone_lr_scale": 0.1},
                optimizer={"kind": "ADAMW", "learning_rate": 3e-3, "weight_decay": 1e-4},
                schedule={"kind": "COSINE"}, epochs=args.epochs, batch_size=16,
                seed=seed, **extra)

        task = {"name": "coarse", "class_names": COARSE_NAMES, "label_map": COARSE_OF}
        for seed in seeds:
            fine_job = wait(client, client.create_job(
                **spec("FINE_TUNE", fine.id, f"fine-s{seed}", seed)))
            coarse_job = wait(client, client.create_job(
                **spec("FINE_TUNE", coarse.id, f"coarse-s{seed}", seed)))
            multi_job = wait(client, client.create_job(
                **spec("MULTITASK", fine.id, f"multitask-s{seed}", seed,
                       multitask={"tasks": [task]})))
            rows += [
                {"seed": seed, "arm": "fine", "fine": fine_job.result.test_accuracy,
                 "coarse": coarse_from_confusion(fine_job.result.test_confusion),
                 "seconds": fine_job.result.train_seconds},
                {"seed": seed, "arm": "coarse", "fine": None,
                 "coarse": coarse_job.result.test_accuracy,
                 "seconds": coarse_job.result.train_seconds},
                {"seed": seed, "arm": "multitask", "fine": multi_job.result.test_accuracy,
                 "coarse": multi_job.result.tasks[0].accuracy,
                 "seconds": multi_job.result.train_seconds},
            ]
            for r in rows[-3:]:
                fine_text = "-" if r["fine"] is None else f"{r['fine']:.4f}"
                print(f"seed {seed} {r['arm']}: fine {fine_text}, coarse "
                      f"{r['coarse']:.4f}, {r['seconds']:.0f} s", file=sys.stderr)
    finally:
        stop_server(server)
        shutil.rmtree(work, ignore_errors=True)

    def cell(values):
        return f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}"

    print(f"\nFashion-MNIST, {args.shots} labelled images per class, "
          f"{args.test_per_class} test images per class; backbone pretrained on "
          f"classes {SOURCE}; full fine-tune, {args.epochs} epochs; seeds {seeds}; "
          f"{time.monotonic() - started:.0f} s in all\n")
    print("| arm | fine (10 classes) test accuracy | coarse (3 groups) test accuracy "
          "| seconds per job |")
    print("|---|---|---|---|")
    for arm, note in (("fine", " (read off the 10 classes)"), ("coarse", ""),
                      ("multitask", "")):
        mine = [r for r in rows if r["arm"] == arm]
        fine_cell = "-" if arm == "coarse" else cell([r["fine"] for r in mine])
        print(f"| {arm} | {fine_cell} | {cell([r['coarse'] for r in mine])}{note} "
              f"| {statistics.mean(r['seconds'] for r in mine):.0f} |")

    def by(arm, key):
        return [r[key] for r in rows if r["arm"] == arm]
    fine_gain = [m - f for m, f in zip(by("multitask", "fine"), by("fine", "fine"))]
    coarse_gain = [m - c for m, c in zip(by("multitask", "coarse"), by("coarse", "coarse"))]
    print(f"\nmultitask minus single-task, per seed: fine head "
          f"{', '.join(f'{100 * g:+.1f}' for g in fine_gain)} points; coarse head "
          f"{', '.join(f'{100 * g:+.1f}' for g in coarse_gain)} points")
    with open(os.path.join(args.out, "multitask.json"), "w") as f:
        json.dump({"rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
