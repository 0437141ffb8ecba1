#!/usr/bin/python3
"""The Python client (client/python/tlserve_client) against a real tlserve
with one local tlworker on 127.0.0.1: the example script end to end
(upload, pretrain, fine-tune, watch, deploy, predict), then the wrapper's
calls and its errors on the models the example made.

  python_client_test.py --build_dir BUILD --source_dir SRC [unittest args]

Exits 77 (ctest: skipped) without Debian's dataset-fashion-mnist.
"""

import argparse
import ctypes
import hashlib
import importlib.util
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
# The example trains two small jobs: about 30 s on 2 idle cores.
EXAMPLE_TIMEOUT_S = 240

parser = argparse.ArgumentParser(add_help=False)
parser.add_argument("--build_dir", required=True)
parser.add_argument("--source_dir", required=True)
ARGS, UNITTEST_ARGV = parser.parse_known_args()
PYTHON_DIR = os.path.join(ARGS.build_dir, "python")
EXAMPLE = os.path.join(ARGS.source_dir, "client/python/examples/fine_tune.py")
sys.path.insert(0, PYTHON_DIR)

import grpc  # noqa: E402
from tlserve.v1 import common_pb2, dataset_pb2, job_pb2, model_pb2  # noqa: E402
from tlserve_client import Client, ProgressPrinter, TlserveError  # noqa: E402

spec = importlib.util.spec_from_file_location("fine_tune_example", EXAMPLE)
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)


def _term_when_parent_dies() -> None:
    # If ctest kills this test at its TIMEOUT, cleanups do not run: the
    # kernel then sends the child SIGTERM (tlserve stops its worker).
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Server:
    """tlserve --local_workers=1 in its own process group, so that stopping
    it also stops the worker it started, whatever state it is in."""

    def __init__(self, root: str):
        self.root = root
        self.log_path = os.path.join(root, "tlserve.log")
        port_file = os.path.join(root, "port")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [os.path.join(ARGS.build_dir, "server/tlserve"),
                 "--listen=127.0.0.1:0", f"--port_file={port_file}",
                 f"--data_dir={os.path.join(root, 'data')}", "--local_workers=1",
                 f"--worker_binary={os.path.join(ARGS.build_dir, 'worker/tlworker')}",
                 "--worker_threads=2"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_term_when_parent_dies)
        deadline = time.monotonic() + 30
        while not (os.path.exists(port_file) and open(port_file).read().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"tlserve did not start:\n{self.log_tail()}")
            time.sleep(0.05)
        self.address = f"127.0.0.1:{int(open(port_file).read())}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        # The worker may outlive a server that exited: end the whole group.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        with open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])


class PythonClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="python_client_test_")
        cls.addClassCleanup(shutil.rmtree, cls.root, ignore_errors=True)
        cls.server = Server(cls.root)
        cls.addClassCleanup(cls.server.stop)
        cls.client = Client(cls.server.address, timeout=60)
        cls.addClassCleanup(cls.client.close)
        env = dict(os.environ, PYTHONPATH=PYTHON_DIR)
        started = time.monotonic()
        cls.example = subprocess.run(
            [sys.executable, EXAMPLE, f"--server={cls.server.address}",
             f"--data_dir={FASHION_MNIST}"],
            env=env, capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT_S,
            preexec_fn=_term_when_parent_dies)
        cls.example_seconds = time.monotonic() - started
        if cls.example.returncode != 0:
            raise RuntimeError(
                f"example failed ({cls.example.returncode}):\n{cls.example.stdout}\n"
                f"{cls.example.stderr}\ntlserve log:\n{cls.server.log_tail()}")
        models = cls.client.list_models()
        if len(models) != 1:
            raise RuntimeError(f"want the example's one model, got {len(models)}")
        cls.model = models[0]
        cls.pngs = example.test_images(FASHION_MNIST, 3)

    def test_example_prints_predictions_and_the_progress_bar(self):
        out = self.example.stdout
        self.assertIn("dataset ", out)
        self.assertIn(f"model {self.model.id}: test accuracy", out)
        prediction_lines = [l for l in out.splitlines() if l.startswith("true ")]
        self.assertEqual(len(prediction_lines), 8, out)
        # Watching draws the bar (plain lines: stderr is a pipe here).
        self.assertRegex(self.example.stderr, r"epoch 1/\d+ \[[#.]{20}\] batch \d+/\d+")
        self.assertIn("RUNNING -> SUCCEEDED", self.example.stderr)
        print(f"\nexample: {self.example_seconds:.1f}s", file=sys.stderr)

    def test_the_jobs_were_made_from_keyword_specs(self):
        dataset, = self.client.list_datasets()
        self.assertEqual((dataset.train_count, dataset.test_count), (60000, 10000))
        self.assertEqual(list(dataset.class_names), example.CLASS_NAMES)
        jobs = {j.spec.kind: j for j in self.client.list_jobs(state="succeeded")}
        self.assertEqual(set(jobs), {job_pb2.PRETRAIN, job_pb2.FINE_TUNE})
        tune = jobs[job_pb2.FINE_TUNE]
        self.assertEqual(list(tune.spec.data.class_subset), example.TARGET_CLASSES)
        self.assertEqual(tune.spec.freeze.mode, job_pb2.FreezePolicy.FROZEN)
        self.assertEqual(tune.spec.optimizer.kind, job_pb2.OptimizerSpec.ADAMW)
        self.assertEqual(tune.spec.backbone_id, jobs[job_pb2.PRETRAIN].result.backbone_id)
        self.assertEqual(tune.result.model_id, self.model.id)
        # Five classes: better than chance (0.2) after the frozen fine-tune.
        self.assertGreater(tune.result.test_accuracy, 0.4)

    def test_predict_returns_labels_and_probabilities(self):
        images = [png for png, _ in self.pngs]
        predictions = self.client.predict(self.model.id, images, top_k=3)
        self.assertEqual(len(predictions), 3)
        target_names = {example.CLASS_NAMES[c] for c in example.TARGET_CLASSES}
        for p in predictions:
            self.assertEqual(len(p.top), 3)
            self.assertEqual(len(p.probabilities), 5)
            self.assertAlmostEqual(sum(p.probabilities), 1.0, places=4)
            self.assertIn(p.label, target_names)
            self.assertEqual(p.probability, max(p.probabilities))
            self.assertEqual(p.top[0].label, list(self.model.class_names)[p.top[0].index])
            scores = [c.probability for c in p.top]
            self.assertEqual(scores, sorted(scores, reverse=True))
        # A bare image is one input, not a sequence of bytes.
        self.assertEqual(len(self.client.predict(self.model.id, images[0])), 1)

    def test_embed_returns_one_feature_vector_per_image(self):
        vectors = self.client.embed(self.model.id, [png for png, _ in self.pngs[:2]])
        backbone = self.client.get_backbone(self.model.backbone_id)
        self.assertEqual([len(v) for v in vectors], [backbone.feature_dim] * 2)
        self.assertTrue(all(math.isfinite(x) for x in vectors[0]))
        self.assertNotEqual(vectors[0], vectors[1])

    def test_unknown_ids_are_not_found(self):
        with self.assertRaises(TlserveError) as raised:
            self.client.predict("model-missing", [self.pngs[0][0]])
        self.assertEqual(raised.exception.code, grpc.StatusCode.NOT_FOUND)
        self.assertIn("model-missing", raised.exception.message)
        with self.assertRaises(TlserveError) as raised:
            self.client.get_job("job-missing")
        self.assertEqual(raised.exception.code, grpc.StatusCode.NOT_FOUND)
        # The id the server logged the failure under comes with the error.
        self.assertRegex(raised.exception.request_id, r"^req-[0-9a-f]{16}$")
        self.assertIn(f"(request id {raised.exception.request_id})", str(raised.exception))

    def test_an_image_that_does_not_decode_is_invalid_argument(self):
        with self.assertRaises(TlserveError) as raised:
            self.client.predict(self.model.id, [b"not an image at all"])
        self.assertEqual(raised.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertTrue(raised.exception.message)
        self.assertTrue(str(raised.exception).startswith("INVALID_ARGUMENT: "))

    def test_bad_uploads_and_specs(self):
        with self.assertRaises(TlserveError) as raised:
            self.client.upload_dataset(b"this is not a tar archive", "junk")
        self.assertEqual(raised.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        with self.assertRaises(TlserveError) as raised:
            self.client.create_job(dataset_id="dataset-missing", backbone_id="x")
        self.assertEqual(raised.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("dataset-missing", raised.exception.message)
        # Caught before anything is sent.
        with self.assertRaisesRegex(ValueError, "no_such_field"):
            self.client.create_job(dataset_id="d", no_such_field=1)
        with self.assertRaisesRegex(ValueError, "unknown dataset format"):
            self.client.upload_dataset(b"x", "junk", format="csv")
        with self.assertRaises(FileNotFoundError):
            self.client.upload_backbone(os.path.join(self.root, "missing.pt"), "b",
                                        channels=1, height=28, width=28)

    def test_export_and_upload_backbone_keep_the_bytes(self):
        path = os.path.join(self.root, "model.pt")
        data = self.client.export_model(self.model.id, path)
        self.assertEqual(hashlib.sha256(data).hexdigest(), self.model.sha256)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), data)
        spec = self.model.input_spec
        # A classifier maps [N,C,H,W] to [N,K]: valid as a feature extractor.
        backbone = self.client.upload_backbone(
            data, "exported-classifier", channels=spec.channels, height=spec.height,
            width=spec.width, mean=list(spec.mean), std=list(spec.std))
        self.assertEqual(backbone.sha256, self.model.sha256)
        self.assertEqual(backbone.size_bytes, len(data))
        self.assertEqual(self.client.get_backbone(backbone.id).name, "exported-classifier")
        # The server's checks come back as TlserveError, here a spec
        # without normalisation.
        with self.assertRaises(TlserveError) as raised:
            self.client.upload_backbone(path, "no-mean", channels=spec.channels,
                                        height=spec.height, width=spec.width)
        self.assertEqual(raised.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("input_spec.mean", raised.exception.message)
        # From the file, with the spec in the JSON form export_backbone.py
        # writes: the same content, and the fit kept.
        spec_path = path + ".json"
        with open(spec_path, "w") as f:
            json.dump({"channels": spec.channels, "height": spec.height, "width": spec.width,
                       "mean": list(spec.mean), "std": list(spec.std),
                       "fit": {"mode": "RESIZE_CENTER_CROP", "shorterSide": 32}}, f)
        again = self.client.upload_backbone(path, "from-file", spec_path)
        self.assertEqual(again.sha256, backbone.sha256)
        self.assertEqual(again.input_spec.fit.mode, common_pb2.InputFit.RESIZE_CENTER_CROP)
        self.assertEqual(again.input_spec.fit.shorter_side, 32)
        # Keywords override the file's fields.
        stretched = self.client.upload_backbone(path, "stretched", spec_path, fit="stretch",
                                                shorter_side=0)
        self.assertEqual(stretched.input_spec.fit.mode, common_pb2.InputFit.STRETCH)

    def test_word_vectors_text_dataset_and_predict_with_texts(self):
        folder = os.path.join(self.root, "text")
        os.makedirs(folder, exist_ok=True)
        vectors = os.path.join(folder, "vectors.txt")
        with open(vectors, "w") as f:
            for i, word in enumerate(["cat", "dog", "owl", "car", "bus", "van", "the"]):
                axis = 0 if i < 3 else (1 if i < 6 else 2)
                f.write(word + "".join(f" {1.0 if d == axis else 0.0}" for d in range(3)) + "\n")
        train = os.path.join(folder, "train.csv")
        with open(train, "w") as f:
            f.write("text,label\n")
            for i in range(24):
                word = ["cat", "dog", "owl", "car", "bus", "van"][i % 6]
                f.write(f"the {word},{'animal' if i % 6 < 3 else 'vehicle'}\n")
        dataset = self.client.upload_dataset(train, "words")  # .csv: text_csv
        self.assertEqual(dataset.format, dataset_pb2.TEXT_CSV)
        self.assertEqual(list(dataset.class_names), ["animal", "vehicle"])
        backbone = self.client.upload_backbone(vectors, "toy-vectors", kind="word_vectors")
        self.assertEqual(backbone.kind, model_pb2.WORD_VECTORS)
        self.assertEqual((backbone.feature_dim, backbone.vocab_size), (3, 7))
        job = self.client.create_job(
            dataset_id=dataset.id, backbone_id=backbone.id, text={"pooling": "max"},
            optimizer={"learning_rate": 0.1}, epochs=10, batch_size=8, seed=1)
        done = self.client.wait(job.id, timeout=120)
        self.assertEqual(done.state, job_pb2.SUCCEEDED, done.error)
        model = self.client.get_model(done.result.model_id)
        self.assertEqual(model.text.pooling, "max")
        answers = self.client.predict(model.id, texts=["the OWL", "a van"])
        self.assertEqual([p.top[0].label for p in answers], ["animal", "vehicle"])
        features = self.client.embed(model.id, texts=["dog"])
        self.assertEqual([round(v, 4) for v in features[0]], [1.0, 0.0, 0.0])
        with self.assertRaises(TlserveError) as refused:
            self.client.predict(model.id, [self.pngs[0][0]])
        self.assertEqual(refused.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("text model", str(refused.exception))

    def test_undeployed_model_is_refused_until_deployed_again(self):
        image = [self.pngs[0][0]]
        self.assertTrue(self.client.undeploy_model(self.model.id).serving.undeployed)
        try:
            with self.assertRaises(TlserveError) as raised:
                self.client.predict(self.model.id, image)
            self.assertEqual(raised.exception.code, grpc.StatusCode.FAILED_PRECONDITION)
        finally:
            deployed = self.client.deploy_model(self.model.id, max_batch_size=4)
        self.assertFalse(deployed.serving.undeployed)
        self.assertEqual(deployed.serving.max_batch_size, 4)
        self.assertEqual(len(self.client.predict(self.model.id, image)), 1)

    def test_watch_follows_a_job_to_its_end(self):
        job = self.client.create_job(
            dataset_id=self.client.list_datasets()[0].id,
            backbone_id=self.model.backbone_id,
            data={"class_subset": [2, 3], "samples_per_class": 16, "max_test_samples": 32},
            freeze={"mode": "FROZEN"}, epochs=2, batch_size=16, seed=3)
        out = io.StringIO()
        events = []
        done = self.client.watch(job.id, out=out, on_event=events.append, timeout=120)
        self.assertEqual(done.state, job_pb2.SUCCEEDED, done.error)
        text = out.getvalue()
        self.assertIn("QUEUED -> RUNNING", text)
        self.assertRegex(text, r"epoch 2/2: train loss [0-9.]+ acc")
        self.assertIn("RUNNING -> SUCCEEDED", text)
        sequences = [e.sequence for e in events]
        self.assertEqual(sequences, sorted(set(sequences)))
        self.assertEqual(events[-1].state_change.to, job_pb2.SUCCEEDED)
        # A finished job replays its events; False from on_event stops early.
        seen = []
        again = self.client.watch(job.id, progress=False,
                                  on_event=lambda e: seen.append(e) or False)
        self.assertEqual(len(seen), 1)
        self.assertEqual(again.id, job.id)
        # Quiet waiting returns the same final job.
        self.assertEqual(self.client.wait(job.id, timeout=30).state, job_pb2.SUCCEEDED)


class ProgressPrinterTest(unittest.TestCase):
    """The bar's rendering alone, no server."""

    def test_progress_bar_redraws_in_place_on_a_terminal(self):
        out = io.StringIO()
        printer = ProgressPrinter(out, tty=True)
        for batch in (1, 2):
            printer.on_event(job_pb2.JobEvent(progress=job_pb2.Progress(
                epoch=1, total_epochs=2, batch=batch, batches_per_epoch=4, loss=0.5)))
        printer.on_event(job_pb2.JobEvent(epoch_metrics=job_pb2.EpochMetrics(epoch=1)))
        printer.finish()
        text = out.getvalue()
        self.assertEqual(text.count("\n"), 1)  # only the epoch line ends one
        self.assertIn("\r\033[Kepoch 1/2 [#####...............] batch 2/4", text)
        # The epoch line replaces the bar instead of following it.
        self.assertIn("batch 2/4 loss 0.5000 acc 0.000\r\033[Kepoch 1/2: ", text)
        self.assertTrue(text.endswith("epoch 1/2: train loss 0.0000 acc 0.000 | "
                                      "val loss 0.0000 acc 0.000 | 0.0s\n"), text)

    def test_plain_output_writes_progress_at_most_once_per_interval(self):
        out = io.StringIO()
        printer = ProgressPrinter(out, plain_interval=3600)  # StringIO: not a tty
        for batch in (1, 2, 3):
            printer.on_event(job_pb2.JobEvent(progress=job_pb2.Progress(
                epoch=1, total_epochs=1, batch=batch, batches_per_epoch=3, eta_seconds=125)))
        change = job_pb2.StateChange(to=job_pb2.FAILED, reason="out of memory")
        setattr(change, "from", job_pb2.RUNNING)
        printer.on_event(job_pb2.JobEvent(state_change=change))
        printer.finish()
        self.assertEqual(out.getvalue(),
                         "epoch 1/1 [######..............] batch 1/3 loss 0.0000 acc 0.000"
                         " ETA 2m05s\nstate RUNNING -> FAILED: out of memory\n")


@unittest.skipIf(shutil.which("openssl") is None, "needs openssl")
class PythonClientTokenTest(unittest.TestCase):
    """token= and tls_ca_file= (and their environment variables) against a
    tlserve with TLS and tokens, no workers."""

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="python_client_token_test_")
        cls.addClassCleanup(shutil.rmtree, cls.root, ignore_errors=True)
        scripts = os.path.join(ARGS.source_dir, "scripts")
        pki = os.path.join(cls.root, "pki")
        subprocess.run([os.path.join(scripts, "make-test-ca.sh"), pki], check=True,
                       capture_output=True)
        tokens = []
        for tenant, role in (("ops", "admin"), ("team-a", "user")):
            made = subprocess.run([os.path.join(scripts, "make-token.sh"), tenant, role,
                                   os.path.join(pki, f"{role}.token")],
                                  check=True, capture_output=True, text=True)
            tokens.append(made.stdout)
        with open(os.path.join(pki, "tokens"), "w") as f:
            f.write("".join(tokens))
        cls.user_token = open(os.path.join(pki, "user.token")).read().strip()
        cls.ca = os.path.join(pki, "ca.pem")
        port_file = os.path.join(cls.root, "port")
        log = open(os.path.join(cls.root, "tlserve.log"), "wb")
        cls.addClassCleanup(log.close)
        cls.proc = subprocess.Popen(
            [os.path.join(ARGS.build_dir, "server/tlserve"), "--listen=127.0.0.1:0",
             f"--port_file={port_file}", f"--data_dir={os.path.join(cls.root, 'data')}",
             f"--auth_tokens_file={os.path.join(pki, 'tokens')}",
             f"--tls_cert_file={os.path.join(pki, 'server.pem')}",
             f"--tls_key_file={os.path.join(pki, 'server.key')}"],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=_term_when_parent_dies)
        cls.addClassCleanup(cls.proc.wait)
        cls.addClassCleanup(cls.proc.terminate)
        deadline = time.monotonic() + 30
        while not (os.path.exists(port_file) and open(port_file).read().strip()):
            if cls.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("tlserve with TLS did not start")
            time.sleep(0.05)
        cls.address = f"127.0.0.1:{int(open(port_file).read())}"

    def test_a_user_token_over_tls_uploads_and_lists_but_not_backbones(self):
        with Client(self.address, token=self.user_token, tls_ca_file=self.ca) as client:
            # Two 2x2 images and their labels, as IDX.
            images = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2]) + bytes(8)
            labels = bytes([0, 0, 8, 1, 0, 0, 0, 2, 0, 1])
            dataset = client.upload_dataset({"train_images": images, "train_labels": labels},
                                            "tiny", class_names=["a", "b"])
            self.assertIn(dataset.id, [d.id for d in client.list_datasets()])
            with self.assertRaises(TlserveError) as refused:
                client.upload_backbone(b"not a model", "bb", channels=1, height=2, width=2,
                                       mean=[0.5], std=[0.25])
            self.assertEqual(refused.exception.code, grpc.StatusCode.PERMISSION_DENIED)
            self.assertIn("needs an admin token", str(refused.exception))

    def test_a_finished_job_can_be_deleted_and_an_unfinished_one_not(self):
        with Client(self.address, token=self.user_token, tls_ca_file=self.ca) as client:
            images = bytes([0, 0, 8, 3, 0, 0, 0, 4, 0, 0, 0, 8, 0, 0, 0, 8]) + bytes(256)
            labels = bytes([0, 0, 8, 1, 0, 0, 0, 4, 0, 1, 0, 1])
            dataset = client.upload_dataset({"train_images": images, "train_labels": labels},
                                            "for-delete", class_names=["a", "b"])
            # No worker: the job stays QUEUED until cancelled.
            job = client.create_job(kind="PRETRAIN", dataset_id=dataset.id, epochs=1,
                                    batch_size=2, keep_checkpoints=2,
                                    pretrain={"backbone_name": "never-trained"})
            with self.assertRaises(TlserveError) as refused:
                client.delete_job(job.id)
            self.assertEqual(refused.exception.code, grpc.StatusCode.FAILED_PRECONDITION)
            self.assertIn("cancel it first", str(refused.exception))
            client.cancel_job(job.id)
            client.delete_job(job.id)
            with self.assertRaises(TlserveError) as gone:
                client.get_job(job.id)
            self.assertEqual(gone.exception.code, grpc.StatusCode.NOT_FOUND)
            with self.assertRaises(TlserveError) as gone:
                client.delete_model("model-that-never-was")
            self.assertEqual(gone.exception.code, grpc.StatusCode.NOT_FOUND)

    def test_the_environment_supplies_token_and_ca(self):
        saved = dict(os.environ)
        self.addCleanup(os.environ.update, saved)
        os.environ["TLSERVE_TOKEN"] = self.user_token
        os.environ["TLSERVE_TLS_CA_FILE"] = self.ca
        with Client(self.address) as client:
            client.list_datasets()
        os.environ["TLSERVE_TOKEN"] = self.user_token + "x"
        with Client(self.address) as client:
            with self.assertRaises(TlserveError) as refused:
                client.list_datasets()
            self.assertEqual(refused.exception.code, grpc.StatusCode.UNAUTHENTICATED)
        del os.environ["TLSERVE_TOKEN"]
        with Client(self.address) as client:
            with self.assertRaises(TlserveError) as refused:
                client.list_jobs()
            self.assertEqual(refused.exception.code, grpc.StatusCode.UNAUTHENTICATED)


if __name__ == "__main__":
    if not os.path.exists(os.path.join(FASHION_MNIST, "t10k-labels-idx1-ubyte.gz")):
        print("dataset-fashion-mnist is not installed: skipped", file=sys.stderr)
        sys.exit(77)
    unittest.main(argv=[sys.argv[0]] + UNITTEST_ARGV, verbosity=2)
