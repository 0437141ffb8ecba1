#!/usr/bin/python3
"""Does `tlctl backbone rank` pick the backbone that fine-tunes best?

On Fashion-MNIST, the target task is the five classes 2 Pullover, 3 Dress,
4 Coat, 6 Shirt, 7 Sneaker with few labels. Candidate backbones are
compact ResNets pretrained (PRETRAIN jobs) on source tasks drawn from the
other five classes (0 T-shirt, 1 Trouser, 5 Sandal, 8 Bag, 9 Ankle boot),
with more or less data, so they differ in how well they transfer. For
each seed the study:

  1. ranks the candidates with `tlctl backbone rank` (nearest-class-mean
     accuracy of each backbone's frozen features, `--shots` labels per
     class, no training);
  2. fine-tunes every candidate on the same labels, two ways: a linear
     head on the frozen backbone ("frozen") and the last block at a tenth
     of the head's rate ("last_block"), the recipes of the transfer study;
  3. compares the orders: Kendall's tau between the rank scores and each
     arm's test accuracy, and whether the top-ranked backbone is the best
     fine-tuned one.

It also reports the few-shot models themselves against fine-tuning.

Usage (a real tlserve with one local worker on loopback, started here):
  bench/backbone_rank_study.py [--build_dir build] [--seeds 1,2,3]
      [--shots 20] [--out var/backbone_rank]
Prints a markdown table and writes OUT/backbone_rank.json.
"""

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from study_server import start_server, stop_server, wait

FMNIST = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
               "Shirt", "Sneaker", "Bag", "Ankle boot"]
TARGET = [2, 3, 4, 6, 7]
# name: (source classes, images per class, epochs)
CANDIDATES = {
    "all5-1000": ([0, 1, 5, 8, 9], 1000, 3),
    "all5-50": ([0, 1, 5, 8, 9], 50, 1),
    "tshirt-trouser": ([0, 1], 1000, 3),
    "footwear": ([5, 9], 1000, 3),
    "trouser-bag": ([1, 8], 300, 2),
}


def kendall_tau(xs, ys):
    """Tau-a over the pairs; ties count as neither concordant nor not."""
    concordant = discordant = 0
    for (x1, y1), (x2, y2) in itertools.combinations(zip(xs, ys), 2):
        s = (x1 - x2) * (y1 - y2)
        concordant += s > 0
        discordant += s < 0
    pairs = len(xs) * (len(xs) - 1) / 2
    return (concordant - discordant) / pairs if pairs else 0.0


def fine_tune_spec(arm, dataset_id, backbone_id, shots, seed):
    spec = {
        "kind": "FINE_TUNE", "display_name": f"rank-study-{arm}-{backbone_id}-s{seed}",
        "backbone_id": backbone_id, "backbone_init": "PRETRAINED",
        "data": {"dataset_id": dataset_id, "class_subset": TARGET,
                 "samples_per_class": shots, "validation_fraction": 0.2},
        "head": {"dropout": 0.0},
        "optimizer": {"kind": "ADAMW", "learning_rate": 1e-2, "weight_decay": 1e-4},
        "schedule": {"kind": "COSINE"},
        # The transfer study's quick rule at 20 labels: 12 epochs of batch 16.
        "epochs": 12, "batch_size": 16, "seed": seed,
    }
    if arm == "frozen":
        spec["freeze"] = {"mode": "FROZEN"}
    else:
        spec["freeze"] = {"mode": "LAST_N_BLOCKS", "n_blocks": 1,
                          "backbone_lr_scale": 0.1}
    return spec


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build_dir", default="build")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--shots", type=int, default=20)
    parser.add_argument("--out", default="var/backbone_rank")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    build_dir = os.path.abspath(args.build_dir)
    sys.path.insert(0, os.path.join(build_dir, "python"))
    from tlserve_client import Client  # noqa: E402 (built into build/python)

    if not os.path.isdir(FMNIST):
        print(f"SKIP: {FMNIST} is missing (Debian: dataset-fashion-mnist)")
        return 77
    os.makedirs(args.out, exist_ok=True)
    data_dir = tempfile.mkdtemp(prefix="backbone_rank_")
    server, address = start_server(build_dir, data_dir)
    started = time.monotonic()
    try:
        client = Client(address, timeout=60)
        client.wait_until_ready(60)
        dataset = client.upload_dataset(FMNIST, "fashion-mnist", class_names=CLASS_NAMES)
        backbones = {}
        pretrain = {}
        for name, (classes, per_class, epochs) in CANDIDATES.items():
            job = client.create_job(
                kind="PRETRAIN", display_name=f"pretrain-{name}",
                data={"dataset_id": dataset.id, "class_subset": classes,
                      "samples_per_class": per_class, "validation_fraction": 0.1},
                optimizer={"kind": "ADAMW", "learning_rate": 2e-3, "weight_decay": 1e-4},
                schedule={"kind": "COSINE"}, epochs=epochs, batch_size=64, seed=1,
                pretrain={"backbone_name": name})
            done = wait(client, job)
            backbones[name] = done.result.backbone_id
            pretrain[name] = {"source_classes": classes, "images_per_class": per_class,
                              "epochs": epochs,
                              "source_test_accuracy": done.result.test_accuracy}
            print(f"pretrained {name}: backbone {backbones[name]}, source test "
                  f"accuracy {done.result.test_accuracy:.3f}", file=sys.stderr)

        rows = []
        for seed in seeds:
            # 1. The ranking, through the real command.
            t0 = time.monotonic()
            ranked = subprocess.run(
                [os.path.join(build_dir, "client/tlctl"), f"--server={address}", "--json",
                 "backbone", "rank", f"--dataset={dataset.id}",
                 "--backbones=" + ",".join(backbones.values()),
                 "--classes=" + ",".join(map(str, TARGET)), f"--shots={args.shots}",
                 "--max-test-samples=0", f"--seed={seed}"],
                check=True, capture_output=True, text=True).stdout
            rank_seconds = time.monotonic() - t0
            scores = {}
            for line in ranked.splitlines():
                entry = json.loads(line)
                if entry["error"]:
                    raise RuntimeError(f"rank failed for {entry['backbone_id']}: "
                                       f"{entry['error']}")
                scores[entry["backbone_id"]] = entry["accuracy"]
            # 2. Fine-tune every candidate, both arms.
            tuned = {arm: {} for arm in ("frozen", "last_block")}
            for arm in tuned:
                jobs = {bb: client.create_job(fine_tune_spec(arm, dataset.id, bb,
                                                             args.shots, seed))
                        for bb in backbones.values()}
                for bb, job in jobs.items():
                    tuned[arm][bb] = wait(client, job).result.test_accuracy
            for name, bb in backbones.items():
                rows.append({"seed": seed, "candidate": name, "backbone_id": bb,
                             "few_shot": scores[bb], "frozen": tuned["frozen"][bb],
                             "last_block": tuned["last_block"][bb],
                             "rank_seconds_all": rank_seconds})
            print(f"seed {seed}: ranked {len(backbones)} backbones in "
                  f"{rank_seconds:.1f} s", file=sys.stderr)
    finally:
        stop_server(server)
        shutil.rmtree(data_dir, ignore_errors=True)

    # 3. Agreement, per seed, then over seeds.
    summary = {"taus": {"frozen": [], "last_block": []},
               "top_pick_is_best": {"frozen": 0, "last_block": 0},
               "seeds": len(seeds)}
    for seed in seeds:
        mine = [r for r in rows if r["seed"] == seed]
        rank = [r["few_shot"] for r in mine]
        top = max(mine, key=lambda r: r["few_shot"])["candidate"]
        for arm in ("frozen", "last_block"):
            acc = [r[arm] for r in mine]
            summary["taus"][arm].append(kendall_tau(rank, acc))
            best = max(mine, key=lambda r: r[arm])["candidate"]
            summary["top_pick_is_best"][arm] += top == best

    print(f"\n{len(CANDIDATES)} candidate backbones, target classes {TARGET}, "
          f"{args.shots} labels per class, seeds {seeds}; "
          f"{time.monotonic() - started:.0f} s in all\n")
    print("| candidate | source classes, images/class, epochs | source test acc "
          "| few-shot (rank score) | fine-tuned, frozen | fine-tuned, last_block |")
    print("|---|---|---|---|---|---|")

    def cell(values):
        return f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}"

    for name in CANDIDATES:
        mine = [r for r in rows if r["candidate"] == name]
        p = pretrain[name]
        print(f"| {name} | {p['source_classes']}, {p['images_per_class']}, "
              f"{p['epochs']} | {p['source_test_accuracy']:.3f} "
              f"| {cell([r['few_shot'] for r in mine])} "
              f"| {cell([r['frozen'] for r in mine])} "
              f"| {cell([r['last_block'] for r in mine])} |")
    print()
    for arm in ("frozen", "last_block"):
        taus = summary["taus"][arm]
        print(f"- vs {arm}: Kendall tau {cell(taus)} (per seed "
              f"{', '.join(f'{t:+.2f}' for t in taus)}); the top-ranked backbone "
              f"was the best fine-tuned one in {summary['top_pick_is_best'][arm]} "
              f"of {len(seeds)} seeds")
    rank_times = sorted({r["rank_seconds_all"] for r in rows})
    print(f"- ranking all {len(CANDIDATES)} candidates took "
          f"{', '.join(f'{t:.1f}' for t in rank_times)} s (one tlctl call per seed)")
    with open(os.path.join(args.out, "backbone_rank.json"), "w") as f:
        json.dump({"rows": rows, "pretrain": pretrain, "summary": summary}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
