#!/usr/bin/python3
"""Fine-tunes a model on Fashion-MNIST through tlserve's Python client and
classifies a few test images with it. The demo's recipe, made small:

  1. upload Fashion-MNIST (Debian's dataset-fashion-mnist);
  2. pretrain the built-in compact ResNet on five "source" classes
     (T-shirt, Trouser, Sandal, Bag, Ankle boot): the backbone;
  3. fine-tune a head on the other five classes with few labels, the
     backbone frozen, watching the progress bar;
  4. deploy the model and predict a few test images of those classes.

Run it against a server with a worker (about 10 s on 2 idle cores):

  build/server/tlserve --listen=127.0.0.1:50051 --data_dir=/tmp/tlserve \\
      --local_workers=1 &
  PYTHONPATH=build/python client/python/examples/fine_tune.py \\
      --server=127.0.0.1:50051
"""

import argparse
import gzip
import os
import struct
import sys
import time
import zlib

from tlserve.v1 import job_pb2
from tlserve_client import Client, TlserveError

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SOURCE_CLASSES = [0, 1, 5, 8, 9]
TARGET_CLASSES = [2, 3, 4, 6, 7]


def read_idx(path: str) -> tuple:
    """(dims, bytes) of an unsigned-byte IDX file, gzipped or not."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return dims, data[4 + 4 * ndim:]


def gray_png(pixels: bytes, height: int, width: int) -> bytes:
    """An 8-bit grayscale PNG: what the server decodes for Predict."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    rows = b"".join(b"\x00" + pixels[r * width:(r + 1) * width] for r in range(height))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def test_images(data_dir: str, count: int) -> list:
    """The first `count` test images of the target classes: (png, label)."""
    (n, height, width), pixels = read_idx(os.path.join(data_dir, "t10k-images-idx3-ubyte.gz"))
    _, labels = read_idx(os.path.join(data_dir, "t10k-labels-idx1-ubyte.gz"))
    out = []
    for i in range(n):
        if labels[i] in TARGET_CLASSES:
            start = i * height * width
            out.append((gray_png(pixels[start:start + height * width], height, width),
                        labels[i]))
            if len(out) == count:
                break
    return out


def finished_or_exit(job: job_pb2.Job, what: str) -> job_pb2.Job:
    if job.state != job_pb2.SUCCEEDED:
        sys.exit(f"{what} job {job.id} {job_pb2.JobState.Name(job.state)}: {job.error}")
    return job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", default=os.environ.get("TLSERVE_SERVER", "127.0.0.1:50051"))
    parser.add_argument("--data_dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--pretrain_samples", type=int, default=200,
                        help="training images per source class")
    parser.add_argument("--pretrain_epochs", type=int, default=2)
    parser.add_argument("--shots", type=int, default=20,
                        help="labelled images per target class")
    parser.add_argument("--epochs", type=int, default=30,
                        help="fine-tune epochs (cheap: the frozen backbone's features are cached)")
    parser.add_argument("--images", type=int, default=8, help="test images to predict")
    args = parser.parse_args()
    # Keep these lines in order with the progress bar on stderr when piped.
    sys.stdout.reconfigure(line_buffering=True)
    started = time.monotonic()

    with Client(args.server) as client:
        client.wait_until_ready(timeout=30)

        # A stable request id: a re-run reuses the first upload.
        dataset = client.upload_dataset(args.data_dir, "fashion-mnist",
                                        class_names=CLASS_NAMES,
                                        request_id=f"example-fashion-mnist:{args.data_dir}")
        print(f"dataset {dataset.id}: {dataset.train_count} train, "
              f"{dataset.test_count} test images")

        pretrain = client.create_job(
            kind="PRETRAIN", dataset_id=dataset.id, display_name="example-pretrain",
            data={"class_subset": SOURCE_CLASSES, "samples_per_class": args.pretrain_samples,
                  "validation_fraction": 0.1, "max_test_samples": 500},
            pretrain={"backbone_name": "example-source-resnet"},
            optimizer={"kind": "ADAMW", "learning_rate": 2e-3},
            epochs=args.pretrain_epochs, batch_size=64, seed=1)
        print(f"pretraining job {pretrain.id} on classes {SOURCE_CLASSES}")
        pretrain = finished_or_exit(client.watch(pretrain.id), "pretrain")
        backbone_id = pretrain.result.backbone_id
        print(f"backbone {backbone_id}: source test accuracy "
              f"{pretrain.result.test_accuracy:.3f}")

        tune = client.create_job(
            dataset_id=dataset.id, backbone_id=backbone_id, display_name="example-fine-tune",
            data={"class_subset": TARGET_CLASSES, "samples_per_class": args.shots,
                  "validation_fraction": 0.2, "max_test_samples": 500},
            freeze={"mode": "FROZEN"},
            optimizer={"kind": "ADAMW", "learning_rate": 1e-2, "weight_decay": 1e-4},
            epochs=args.epochs, batch_size=16, seed=1)
        print(f"fine-tuning job {tune.id} on classes {TARGET_CLASSES}, "
              f"{args.shots} images each")
        tune = finished_or_exit(client.watch(tune.id), "fine-tune")
        model_id = tune.result.model_id
        print(f"model {model_id}: test accuracy {tune.result.test_accuracy:.3f}")

        client.deploy_model(model_id, max_batch_size=16)
        images = test_images(args.data_dir, args.images)
        try:
            predictions = client.predict(model_id, [png for png, _ in images], top_k=3)
        except TlserveError as e:
            sys.exit(f"predict failed: {e}")
        right = 0
        for (_, label), p in zip(images, predictions):
            right += p.label == CLASS_NAMES[label]
            print(f"true {CLASS_NAMES[label]:<12} predicted {p.label:<12} "
                  f"p={p.probability:.3f}")
        print(f"{right}/{len(images)} right; {time.monotonic() - started:.1f}s in all")


if __name__ == "__main__":
    main()
