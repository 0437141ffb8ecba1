#!/usr/bin/python3
"""Hostile and malformed input against a real tlserve (with one local
worker) on 127.0.0.1: every input gets the status the API documents, with a
message naming what is wrong, and nothing is lost: the server stays up and
what was stored before is intact.

  hostile_input_test.py --build_dir BUILD [--table OUT.md]

--table writes the inputs and the statuses they got as a Markdown table
(docs/reliability.md). Exits 77 (ctest: skipped) without Debian's
dataset-fashion-mnist.
"""

import argparse
import ctypes
import gzip
import io
import os
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"

parser = argparse.ArgumentParser()
parser.add_argument("--build_dir", required=True)
parser.add_argument("--table", default="")
ARGS = parser.parse_args()
sys.path.insert(0, os.path.join(ARGS.build_dir, "python"))

import grpc  # noqa: E402
from tlserve.v1 import common_pb2, dataset_pb2, dataset_pb2_grpc  # noqa: E402
from tlserve.v1 import inference_pb2, inference_pb2_grpc, job_pb2  # noqa: E402
from tlserve.v1 import job_pb2_grpc, model_pb2, model_pb2_grpc  # noqa: E402
from tlserve_client import Client  # noqa: E402

import hashlib  # noqa: E402


def term_when_parent_dies() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def idx(dims, data: bytes) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, len(dims))
    header += b"".join(struct.pack(">I", d) for d in dims)
    return header + data


def png(width: int, height: int, rows: bytes = b"") -> bytes:
    """A gray PNG; with `rows` empty, a few bytes of data only (a lie about
    its size is then cheap to make)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body +
                struct.pack(">I", zlib.crc32(kind + body) & 0xffffffff))
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    out += chunk(b"IDAT", zlib.compress(rows or b"\x00" * 64))
    return out + chunk(b"IEND", b"")


def real_png(size: int = 8, shade: int = 100) -> bytes:
    return png(size, size, b"".join(b"\x00" + bytes([shade]) * size for _ in range(size)))


def tar_of(entries) -> bytes:
    """entries: (name, bytes) or (name, None, linkname) for a symlink."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for entry in entries:
            info = tarfile.TarInfo(entry[0])
            if len(entry) == 3:
                info.type = tarfile.SYMTYPE
                info.linkname = entry[2]
                t.addfile(info)
            else:
                info.size = len(entry[1])
                t.addfile(info, io.BytesIO(entry[1]))
    return buf.getvalue()


def gzip_bomb(dims, megabytes: int) -> bytes:
    """A gzip'd IDX whose header declares `dims` and whose body inflates to
    `megabytes` MiB of zeros from a few hundred KiB."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as g:
        g.write(idx(dims, b""))
        zeros = bytes(1 << 20)
        for _ in range(megabytes):
            g.write(zeros)
    return out.getvalue()


class Server:
    def __init__(self, root: str):
        port_file = os.path.join(root, "port")
        self.log_path = os.path.join(root, "tlserve.log")
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [os.path.join(ARGS.build_dir, "server/tlserve"), "--listen=127.0.0.1:0",
             f"--data_dir={os.path.join(root, 'data')}", f"--port_file={port_file}",
             "--local_workers=1", "--worker_threads=1",
             f"--worker_binary={os.path.join(ARGS.build_dir, 'worker/tlworker')}"],
            stdout=self.log, stderr=self.log, preexec_fn=term_when_parent_dies)
        deadline = time.time() + 30
        while not os.path.exists(port_file) or os.path.getsize(port_file) == 0:
            if self.process.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"tlserve did not start; see {self.log_path}")
            time.sleep(0.05)
        with open(port_file) as f:
            self.address = f"127.0.0.1:{int(f.read())}"
        self.client = Client(self.address)
        self.client.wait_until_ready(30)
        channel = grpc.insecure_channel(self.address)
        self.datasets = dataset_pb2_grpc.DatasetServiceStub(channel)
        self.models = model_pb2_grpc.ModelServiceStub(channel)
        self.jobs = job_pb2_grpc.JobServiceStub(channel)
        self.inference = inference_pb2_grpc.InferenceServiceStub(channel)

    def stop(self) -> int:
        self.client.close()
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self.log.close()


def dataset_stream(parts, name="hostile", class_names=(), declared=None):
    """UploadDataset requests for (role, bytes) parts; `declared` overrides
    the header's parts (size/hash lies)."""
    header = dataset_pb2.DatasetUploadHeader(name=name, format=dataset_pb2.IDX,
                                             class_names=list(class_names))
    if any(role in (dataset_pb2.TRAIN_ARCHIVE, dataset_pb2.TEST_ARCHIVE) for role, _ in parts):
        header.format = dataset_pb2.IMAGE_FOLDER_TAR
    for role, data in parts:
        header.parts.add(role=role, size_bytes=len(data),
                         sha256=hashlib.sha256(data).hexdigest())
    if declared is not None:
        del header.parts[:]
        header.parts.extend(declared)
    yield dataset_pb2.UploadDatasetRequest(header=header)
    for index, (_, data) in enumerate(parts):
        for start in range(0, len(data), 1 << 20):
            yield dataset_pb2.UploadDatasetRequest(
                chunk=dataset_pb2.DatasetChunk(part_index=index, data=data[start:start + (1 << 20)]))


def main() -> int:
    if not os.path.isdir(FASHION_MNIST):
        print("skipped: needs dataset-fashion-mnist")
        return 77
    root = tempfile.mkdtemp(prefix="tlserve_hostile_")
    server = None
    rows = []
    failures = []
    try:
        server = Server(root)
        client = server.client

        # Something stored before the hostile inputs, checked after them.
        labels = bytes([0, 1] * 20)
        images = b"".join(bytes([40 * (i % 2) + 20]) * 784 for i in range(40))
        good = client.upload_dataset({"train_images": idx([40, 28, 28], images),
                                      "train_labels": idx([40], labels)}, "good",
                                     class_names=["zero", "one"])
        import torch
        import torchvision
        net = torchvision.models.resnet18(num_classes=10)
        net.fc = torch.nn.Identity()
        backbone_path = os.path.join(root, "resnet18.pt")
        torch.jit.script(net.eval()).save(backbone_path)
        backbone = client.upload_backbone(backbone_path, "resnet18", channels=3, height=32,
                                          width=32, mean=[0.5] * 3, std=[0.25] * 3)
        job = client.create_job(dataset_id=good.id, backbone_id=backbone.id,
                                epochs=1, batch_size=16, optimizer={"learning_rate": 1e-3},
                                freeze={"mode": "FROZEN"})
        done = client.wait(job.id, timeout=300)
        assert done.state == job_pb2.SUCCEEDED, done.error
        model_id = done.result.model_id

        def spec(**changes) -> job_pb2.JobSpec:
            s = job_pb2.JobSpec(kind=job_pb2.FINE_TUNE, backbone_id=backbone.id, epochs=1,
                                batch_size=16)
            s.data.dataset_id = good.id
            s.optimizer.learning_rate = 1e-3
            for key, value in changes.items():
                target = s
                *path, leaf = key.split("__")
                for p in path:
                    target = getattr(target, p)
                if isinstance(value, list):
                    del getattr(target, leaf)[:]
                    getattr(target, leaf).extend(value)
                else:
                    setattr(target, leaf, value)
            return s

        # A job that stays queued: the local worker runs one job at a time,
        # and this one waits behind a long one (a full fine-tune of 1000
        # epochs, cancelled at the end).
        long_job = client.create_job(dataset_id=good.id, backbone_id=backbone.id, epochs=1000,
                                     batch_size=16, optimizer={"learning_rate": 1e-4},
                                     freeze={"mode": "FULL"})
        queued_job = client.create_job(dataset_id=good.id, backbone_id=backbone.id, epochs=1,
                                       batch_size=16, optimizer={"learning_rate": 1e-3},
                                       freeze={"mode": "FROZEN"})

        def tensor_request(shape, contents=None, dtype="FP32"):
            n = 1
            for d in shape:
                n *= max(d, 0)
            if contents is None:
                contents = bytes(4 * n) if n < (1 << 24) else b""
            return inference_pb2.PredictRequest(
                model_id=model_id, tensor=common_pb2.RawTensor(shape=shape, dtype=dtype,
                                                               contents=contents))

        def upload(parts, **kw):
            return lambda: server.datasets.UploadDataset(dataset_stream(parts, **kw), timeout=120)

        T_IMG, T_LAB = dataset_pb2.TRAIN_IMAGES, dataset_pb2.TRAIN_LABELS
        ARCH = dataset_pb2.TRAIN_ARCHIVE
        OK_IMAGES = idx([4, 28, 28], bytes(4 * 784))
        OK_LABELS = idx([4], bytes([0, 1, 0, 1]))
        INVALID = "INVALID_ARGUMENT"
        BIG_FLAT_PNG = png(4000, 4000, b"".join(b"\x00" + bytes(4000) for _ in range(4000)))
        cases = [
            # (what, call, expected code, words the message must hold)
            ("IDX with a wrong magic number",
             upload([(T_IMG, b"\x01\x02\x03\x04" + bytes(100)), (T_LAB, OK_LABELS)]),
             INVALID, "TRAIN_IMAGES"),
            ("IDX truncated: header declares 4x28x28, body has 10 bytes",
             upload([(T_IMG, idx([4, 28, 28], bytes(10))), (T_LAB, OK_LABELS)]),
             INVALID, "TRAIN_IMAGES"),
            ("IDX gzip bomb: 1.5 GiB of zeros in 1.5 MiB, header declares 2,000,000x28x28",
             upload([(T_IMG, gzip_bomb([2_000_000, 28, 28], 1536)), (T_LAB, OK_LABELS)]),
             INVALID, "TRAIN_IMAGES"),
            ("IDX gzip bomb: header declares 4x28x28, body inflates to 1 GiB",
             upload([(T_IMG, gzip_bomb([4, 28, 28], 1024)), (T_LAB, OK_LABELS)]),
             INVALID, "more data after gunzip than header dims 4x28x28 declare"),
            ("IDX declaring 65536x65536 images",
             upload([(T_IMG, idx([1, 65536, 65536], b"")), (T_LAB, idx([1], b"\x00"))]),
             INVALID, "need 4294967296"),
            ("label 7 with 2 class names",
             upload([(T_IMG, OK_IMAGES), (T_LAB, idx([4], bytes([0, 1, 7, 1])))],
                    class_names=["a", "b"]),
             INVALID, "label 7"),
            ("labels count differs from images",
             upload([(T_IMG, OK_IMAGES), (T_LAB, idx([3], bytes(3)))]),
             INVALID, "labels"),
            ("part bytes differ from the declared sha256",
             upload([(T_IMG, OK_IMAGES), (T_LAB, OK_LABELS)], declared=[
                 dataset_pb2.DatasetPart(role=T_IMG, size_bytes=len(OK_IMAGES), sha256="0" * 64),
                 dataset_pb2.DatasetPart(role=T_LAB, size_bytes=len(OK_LABELS),
                                         sha256=hashlib.sha256(OK_LABELS).hexdigest())]),
             INVALID, "sha256"),
            ("part longer than its declared size",
             upload([(T_IMG, OK_IMAGES), (T_LAB, OK_LABELS)], declared=[
                 dataset_pb2.DatasetPart(role=T_IMG, size_bytes=10),
                 dataset_pb2.DatasetPart(role=T_LAB, size_bytes=len(OK_LABELS))]),
             INVALID, "received more than the 10 bytes"),
            ("declared part size of 1 PiB",
             upload([(T_IMG, OK_IMAGES), (T_LAB, OK_LABELS)], declared=[
                 dataset_pb2.DatasetPart(role=T_IMG, size_bytes=1 << 50),
                 dataset_pb2.DatasetPart(role=T_LAB, size_bytes=len(OK_LABELS))]),
             INVALID, "size_bytes"),
            ("tar entry '../escape/x.png'",
             upload([(ARCH, tar_of([("a/x.png", real_png()), ("../escape/x.png", real_png())]))]),
             INVALID, "escapes"),
            ("tar entry with an absolute path '/etc/x.png'",
             upload([(ARCH, tar_of([("a/x.png", real_png()), ("/etc/x.png", real_png())]))]),
             INVALID, "/etc/x.png"),
            ("tar symlink entry 'a/link.png -> /etc/passwd'",
             upload([(ARCH, tar_of([("a/x.png", real_png()), ("b/y.png", real_png()),
                                    ("a/link.png", None, "/etc/passwd")]))]),
             INVALID, "link"),
            ("PNG whose header claims 100000x100000 pixels",
             upload([(ARCH, tar_of([("a/x.png", real_png()), ("b/big.png", png(100000, 100000))]))]),
             INVALID, "b/big.png"),
            ("tar of 40 one-colour 4000x4000 PNGs (15 KiB each, 610 MiB decoded)",
             upload([(ARCH, tar_of([(f"c{i % 2}/{i}.png", BIG_FLAT_PNG) for i in range(40)]))]),
             INVALID, "decode to more than"),
            ("PNG cut off after its header",
             upload([(ARCH, tar_of([("a/x.png", real_png()), ("b/cut.png", real_png()[:40])]))]),
             INVALID, "b/cut.png"),
            ("tar that is not a tar (random bytes)",
             upload([(ARCH, os.urandom(4096))]), INVALID, "not a readable tar archive"),
            ("dataset name of 100,000 characters",
             upload([(T_IMG, OK_IMAGES), (T_LAB, OK_LABELS)], name="n" * 100_000),
             INVALID, "name"),
            ("100,001 class names",
             upload([(T_IMG, OK_IMAGES), (T_LAB, OK_LABELS)],
                    class_names=[f"c{i}" for i in range(100_001)]),
             INVALID, "class_names"),
            ("job on an unknown backbone",
             lambda: server.jobs.CreateJob(job_pb2.CreateJobRequest(spec=spec(backbone_id="nope"))),
             INVALID, "spec.backbone_id"),
            ("job with learning rate -0.01",
             lambda: server.jobs.CreateJob(job_pb2.CreateJobRequest(
                 spec=spec(optimizer__learning_rate=-0.01))),
             INVALID, "learning_rate"),
            ("job with learning rate NaN",
             lambda: server.jobs.CreateJob(job_pb2.CreateJobRequest(
                 spec=spec(optimizer__learning_rate=float("nan")))),
             INVALID, "learning_rate"),
            ("job with 1,000,000 epochs",
             lambda: server.jobs.CreateJob(job_pb2.CreateJobRequest(spec=spec(epochs=1_000_000))),
             INVALID, "epochs"),
            ("job with a class subset of a class the dataset lacks",
             lambda: server.jobs.CreateJob(job_pb2.CreateJobRequest(
                 spec=spec(data__class_subset=[0, 9]))),
             INVALID, "class_subset"),
            ("job with batch size -5",
             lambda: server.jobs.CreateJob(job_pb2.CreateJobRequest(spec=spec(batch_size=-5))),
             INVALID, "batch_size"),
            ("job with passes larger than its batch",
             lambda: server.jobs.CreateJob(job_pb2.CreateJobRequest(
                 spec=spec(batch_size=16, micro_batch_size=64))),
             INVALID, "micro_batch_size"),
            ("job with an unknown precision",
             lambda: server.jobs.CreateJob(job_pb2.CreateJobRequest(spec=spec(precision=7))),
             INVALID, "spec.precision"),
            ("job keeping -1 checkpoints",
             lambda: server.jobs.CreateJob(job_pb2.CreateJobRequest(spec=spec(keep_checkpoints=-1))),
             INVALID, "keep_checkpoints"),
            ("deleting a job that is still queued",
             lambda: server.jobs.DeleteJob(job_pb2.DeleteJobRequest(id=queued_job.id)),
             "FAILED_PRECONDITION", "cancel it first"),
            ("deleting a model that is deployed",
             lambda: server.models.DeleteModel(model_pb2.DeleteModelRequest(id=model_id)),
             "FAILED_PRECONDITION", "undeploy it first"),
            ("job with a request id of 100,000 characters",
             lambda: server.jobs.CreateJob(job_pb2.CreateJobRequest(spec=spec(),
                                                                   request_id="r" * 100_000)),
             INVALID, "request_id"),
            ("job id '../../etc/passwd'",
             lambda: server.jobs.GetJob(job_pb2.GetJobRequest(id="../../etc/passwd")),
             "NOT_FOUND", "not found"),
            ("list page token that was never issued",
             lambda: server.jobs.ListJobs(job_pb2.ListJobsRequest(page_token="garbage!")),
             INVALID, "page_token"),
            ("Predict on an unknown model",
             lambda: server.inference.Predict(inference_pb2.PredictRequest(
                 model_id="model-nope", images=[real_png()])),
             "NOT_FOUND", "model-nope"),
            ("Predict with random bytes as the image",
             lambda: server.inference.Predict(inference_pb2.PredictRequest(
                 model_id=model_id, images=[os.urandom(300)])),
             INVALID, "image"),
            ("Predict with a PNG claiming 100000x100000 pixels",
             lambda: server.inference.Predict(inference_pb2.PredictRequest(
                 model_id=model_id, images=[png(100000, 100000)])),
             INVALID, "image"),
            ("Predict tensor of the wrong size 1x3x64x64",
             lambda: server.inference.Predict(tensor_request([1, 3, 64, 64])),
             INVALID, "shape"),
            ("Predict tensor shape 1000000000x3x32x32 with no contents",
             lambda: server.inference.Predict(tensor_request([1_000_000_000, 3, 32, 32])),
             INVALID, "shape"),
            ("Predict tensor whose contents are 7 bytes short",
             lambda: server.inference.Predict(tensor_request(
                 [1, 3, 32, 32], contents=bytes(4 * 3 * 32 * 32 - 7))),
             INVALID, "contents"),
            ("Predict tensor with dtype 'FP64'",
             lambda: server.inference.Predict(tensor_request([1, 3, 32, 32], dtype="FP64")),
             INVALID, "dtype"),
            ("backbone upload that is not TorchScript",
             lambda: server.models.UploadBackbone(iter([
                 model_pb2.UploadBackboneRequest(header=model_pb2.BackboneUploadHeader(
                     name="junk", size_bytes=1000,
                     input_spec=common_pb2.InputSpec(channels=3, height=32, width=32,
                                                     mean=[0.5] * 3, std=[0.25] * 3))),
                 model_pb2.UploadBackboneRequest(chunk=os.urandom(1000))]), timeout=60),
             INVALID, "TorchScript"),
            ("message of 100 MiB (over the server's receive limit)",
             lambda: server.inference.Predict(inference_pb2.PredictRequest(
                 model_id=model_id, images=[bytes(100 << 20)]), timeout=60),
             "RESOURCE_EXHAUSTED", ""),
        ]

        for what, call, expected, words in cases:
            started = time.time()
            try:
                call()
                code, message = "OK", ""
            except grpc.RpcError as e:
                code, message = e.code().name, e.details() or ""
            took = time.time() - started
            ok = code == expected and words.lower() in message.lower()
            short = message if len(message) <= 160 else message[:157] + "..."
            rows.append((what, code, short, took))
            mark = "ok  " if ok else "FAIL"
            print(f"{mark} {what}: {code} {short!r} ({took:.2f} s)")
            if not ok:
                failures.append(f"{what}: want {expected} with '{words}', got {code} '{message}'")
            if server.process.poll() is not None:
                failures.append(f"the server died after: {what}")
                break

        for unfinished in (queued_job, long_job):
            client.cancel_job(unfinished.id)

        # Nothing lost: the server is healthy, the good dataset and the model
        # are as they were, and the model still answers.
        assert server.process.poll() is None, "tlserve exited"
        after = client.get_dataset(good.id)
        if list(after.parts) != list(good.parts) or after.train_count != good.train_count:
            failures.append("the dataset stored before changed")
        predicted = client.predict(model_id, [real_png(32)], top_k=1)
        if len(predicted) != 1:
            failures.append("the model stopped answering")
        stored = [d.name for d in client.list_datasets()]
        if stored != ["good"]:
            failures.append(f"a refused upload was stored: datasets {stored}")
    finally:
        code = server.stop() if server is not None else 0
        if code != 0:
            failures.append(f"tlserve exited {code} on SIGTERM")
        if ARGS.table and rows:
            with open(ARGS.table, "w") as f:
                f.write("| Input | Status | Message |\n|---|---|---|\n")
                for what, got, message, _ in rows:
                    cell = message.replace("|", "\\|")
                    f.write(f"| {what} | {got} | {cell} |\n")
        if failures:
            print(f"logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    for f in failures:
        print("FAILED:", f)
    print(f"{len(rows) - len(failures)} of {len(rows)} hostile inputs got the documented status")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
