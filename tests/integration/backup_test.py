#!/usr/bin/python3
"""scripts/backup-data-dir.sh against a running tlserve on 127.0.0.1: a
backup taken while an upload is going on restores into a second tlserve
that has every dataset acknowledged before the backup, with every blob
intact (its sha256 is its name) and a database that passes integrity_check.

  backup_test.py --build_dir BUILD --source_dir SRC

Exits 77 (ctest: skipped) without Debian's dataset-fashion-mnist or sqlite3.
"""

import argparse
import ctypes
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"

parser = argparse.ArgumentParser()
parser.add_argument("--build_dir", required=True)
parser.add_argument("--source_dir", required=True)
ARGS = parser.parse_args()
sys.path.insert(0, os.path.join(ARGS.build_dir, "python"))

from tlserve_client import Client  # noqa: E402


def term_when_parent_dies() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Server:
    """tlserve without workers on 127.0.0.1, any free port."""

    def __init__(self, data_dir: str, log_path: str):
        port_file = data_dir + ".port"
        self.log = open(log_path, "ab")
        self.process = subprocess.Popen(
            [os.path.join(ARGS.build_dir, "server/tlserve"), "--listen=127.0.0.1:0",
             f"--data_dir={data_dir}", f"--port_file={port_file}"],
            stdout=self.log, stderr=self.log, preexec_fn=term_when_parent_dies)
        deadline = time.time() + 30
        while not os.path.exists(port_file):
            if self.process.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"tlserve did not start; see {log_path}")
            time.sleep(0.05)
        with open(port_file) as f:
            self.address = f"127.0.0.1:{int(f.read())}"
        self.client = Client(self.address)
        self.client.wait_until_ready(30)

    def stop(self) -> int:
        self.client.close()
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self.log.close()


def check(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


def main() -> int:
    if not os.path.isdir(FASHION_MNIST) or shutil.which("sqlite3") is None:
        print("skipped: needs dataset-fashion-mnist and sqlite3")
        return 77
    script = os.path.join(ARGS.source_dir, "scripts/backup-data-dir.sh")
    root = tempfile.mkdtemp(prefix="tlserve_backup_")
    log = os.path.join(root, "tlserve.log")
    live = os.path.join(root, "live")
    backup = os.path.join(root, "backup")
    servers = []
    try:
        server = Server(live, log)
        servers.append(server)
        test_set = {"train_images": f"{FASHION_MNIST}/t10k-images-idx3-ubyte.gz",
                    "train_labels": f"{FASHION_MNIST}/t10k-labels-idx1-ubyte.gz"}
        before = server.client.upload_dataset(test_set, "acknowledged")

        # The backup runs while the full training set streams in.
        during = {}

        def upload_more() -> None:
            during["dataset"] = server.client.upload_dataset(FASHION_MNIST, "during")

        uploader = threading.Thread(target=upload_more)
        uploader.start()
        time.sleep(0.2)
        result = subprocess.run([script, live, backup], capture_output=True, text=True,
                                timeout=120)
        uploader.join(timeout=300)
        check(result.returncode == 0, f"backup failed: {result.stderr}")
        print(result.stdout.strip())
        check("dataset" in during, "the upload during the backup failed")

        # A second backup into the same place is refused, naming the file.
        again = subprocess.run([script, live, backup], capture_output=True, text=True,
                               timeout=60)
        check(again.returncode != 0 and "exists" in again.stderr,
              f"overwriting a backup was not refused: {again.returncode} {again.stderr}")
        bad = subprocess.run([script, root, os.path.join(root, "x")], capture_output=True,
                             text=True, timeout=60)
        check(bad.returncode != 0 and "tlserve.db not found" in bad.stderr,
              f"a folder without tlserve.db was not refused: {bad.stderr}")

        # Every blob is whole: its content hashes to its name.
        names = []
        for folder, _, files in os.walk(os.path.join(backup, "blobs")):
            for name in files:
                with open(os.path.join(folder, name), "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                check(digest == name, f"blob {name} holds {digest}")
                names.append(name)
        for part in before.parts:
            check(part.sha256 in names, f"blob {part.sha256} of '{before.name}' not backed up")

        # The backup serves: the acknowledged dataset is there, as it was.
        restored = Server(backup, log)
        servers.append(restored)
        got = restored.client.get_dataset(before.id)
        check(got.name == "acknowledged", f"restored dataset is {got.name}")
        check([p.sha256 for p in got.parts] == [p.sha256 for p in before.parts],
              "restored dataset parts differ")
        check(list(got.train_class_counts) == list(before.train_class_counts),
              "restored class counts differ")
        print(f"restored: {len(restored.client.list_datasets())} datasets, "
              f"{len(names)} blobs")
        for s in reversed(servers):
            check(s.stop() == 0, "tlserve did not exit cleanly on SIGTERM")
        servers.clear()
        return 0
    finally:
        for s in servers:
            if s.process.poll() is None:
                s.process.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
