"""A thin Python client for the tlserve public API (tlserve.v1).

Methods return the generated protobuf messages (Dataset, Backbone, Job,
Model) so every field the server sends is there, except predict() and
embed(), which return plain Python values. Every gRPC failure is raised as
TlserveError with the status code and the server's message; mistakes the
client can see by itself (an unknown spec field, a missing file) raise
ValueError or OSError before anything is sent.
"""

import collections
import hashlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import (Callable, Iterable, Iterator, Mapping, Optional, Sequence,
                    TextIO, Union)

import grpc
from google.protobuf import json_format

from tlserve.v1 import common_pb2
from tlserve.v1 import dataset_pb2
from tlserve.v1 import dataset_pb2_grpc
from tlserve.v1 import inference_pb2
from tlserve.v1 import inference_pb2_grpc
from tlserve.v1 import job_pb2
from tlserve.v1 import job_pb2_grpc
from tlserve.v1 import model_pb2
from tlserve.v1 import model_pb2_grpc

from tlserve_client.progress import ProgressPrinter

# A file path or the bytes themselves.
Source = Union[str, os.PathLike, bytes, bytearray, memoryview]

# The server takes uploads in chunks; 1 MiB as tlctl sends them.
CHUNK_BYTES = 1 << 20
# Lists and predictions can exceed gRPC's 4 MiB default.
MAX_RECEIVE_BYTES = 64 << 20
LIST_PAGE_SIZE = 100
FINAL_STATES = (job_pb2.SUCCEEDED, job_pb2.FAILED, job_pb2.CANCELLED)

# Fashion-MNIST's and MNIST's file names, each optionally gzipped.
IDX_FILE_NAMES = {
    dataset_pb2.TRAIN_IMAGES: "train-images-idx3-ubyte",
    dataset_pb2.TRAIN_LABELS: "train-labels-idx1-ubyte",
    dataset_pb2.TEST_IMAGES: "t10k-images-idx3-ubyte",
    dataset_pb2.TEST_LABELS: "t10k-labels-idx1-ubyte",
}

# The format a dataset's first part implies when none is given.
FORMAT_OF_ROLE = {
    dataset_pb2.TRAIN_ARCHIVE: dataset_pb2.IMAGE_FOLDER_TAR,
    dataset_pb2.TEST_ARCHIVE: dataset_pb2.IMAGE_FOLDER_TAR,
    dataset_pb2.TRAIN_CSV: dataset_pb2.TEXT_CSV,
    dataset_pb2.TEST_CSV: dataset_pb2.TEXT_CSV,
}


class TlserveError(Exception):
    """A call the server (or gRPC on the way) failed.

    `code` is the grpc.StatusCode (e.g. grpc.StatusCode.NOT_FOUND),
    `message` the server's explanation, and `request_id` the id the server
    logged the failure under ("" when the call never reached it): quote it
    to whoever runs the server."""

    def __init__(self, code: grpc.StatusCode, message: str, request_id: str = ""):
        suffix = f" (request id {request_id})" if request_id else ""
        super().__init__(f"{code.name}: {message}{suffix}")
        self.code = code
        self.message = message
        self.request_id = request_id

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> "TlserveError":
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = error.details() if hasattr(error, "details") else str(error)
        request_id = ""
        if hasattr(error, "trailing_metadata"):
            for key, value in error.trailing_metadata() or ():
                if key == "x-request-id":
                    request_id = value
        return cls(code or grpc.StatusCode.UNKNOWN, details or "", request_id)


@dataclass(frozen=True)
class ClassScore:
    index: int
    label: str
    probability: float


@dataclass(frozen=True)
class Prediction:
    """One input's result: the top classes, best first, and the softmax over
    every class (indexed like the model's class_names)."""
    top: list
    probabilities: list

    @property
    def label(self) -> str:
        """The most likely class's name."""
        return self.top[0].label if self.top else ""

    @property
    def probability(self) -> float:
        return self.top[0].probability if self.top else 0.0


def _enum_value(enum_type, value, what: str) -> int:
    """An enum given as its number or (case-insensitively) its name."""
    if isinstance(value, int):
        return value
    try:
        return enum_type.Value(str(value).upper())
    except ValueError:
        names = ", ".join(n.lower() for n in enum_type.keys() if not n.endswith("UNSPECIFIED"))
        raise ValueError(f"unknown {what} '{value}' (known: {names})") from None


class _Blob:
    """Bytes from memory or from a file, read in chunks. A file is read
    twice (once for the header's size and hash, once to send it) rather than
    held in memory."""

    def __init__(self, source: Source):
        if isinstance(source, (bytes, bytearray, memoryview)):
            self._data: Optional[bytes] = bytes(source)
            self._path = None
        else:
            self._data = None
            self._path = os.fspath(source)
            if not os.path.isfile(self._path):
                raise FileNotFoundError(f"no such file: '{self._path}'")

    def chunks(self) -> Iterator[bytes]:
        if self._data is not None:
            for start in range(0, len(self._data), CHUNK_BYTES):
                yield self._data[start:start + CHUNK_BYTES]
            return
        with open(self._path, "rb") as f:
            while True:
                chunk = f.read(CHUNK_BYTES)
                if not chunk:
                    return
                yield chunk

    def digest(self) -> tuple:
        """(size in bytes, hex sha256)."""
        hasher = hashlib.sha256()
        size = 0
        for chunk in self.chunks():
            hasher.update(chunk)
            size += len(chunk)
        return size, hasher.hexdigest()


def _read_image(image: Source) -> bytes:
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    with open(os.fspath(image), "rb") as f:
        return f.read()


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                   grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds "authorization: Bearer <token>" to every call. (gRPC's access
    token credentials need TLS; development servers run plaintext.)"""

    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details):
        return _CallDetails(details.method, details.timeout,
                            list(details.metadata or []) + [self._header],
                            details.credentials, getattr(details, "wait_for_ready", None),
                            getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)


class _CallDetails(collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                         "compression")), grpc.ClientCallDetails):
    pass


class Client:
    """A connection to one tlserve server.

    Usable as a context manager (closes the channel). Safe to share between
    threads: each call is independent.

        with Client("127.0.0.1:50051") as client:
            dataset = client.upload_dataset("/usr/share/datasets/fashion-mnist",
                                            "fashion-mnist")
    """

    def __init__(self, address: str, timeout: float = 30.0,
                 stream_timeout: float = 1800.0, *, token: Optional[str] = None,
                 tls_ca_file: Optional[str] = None):
        """`address`: host:port of the server. `timeout`: seconds per unary
        call (Get/List/Create/Deploy/Predict). `stream_timeout`: seconds per
        upload or export, which move many megabytes. `token`: sent as
        "authorization: Bearer <token>" on every call (default: the
        TLSERVE_TOKEN environment variable). `tls_ca_file`: the PEM CA of
        the server's certificate, which turns on TLS (default:
        TLSERVE_TLS_CA_FILE; unset: plaintext). gRPC connects lazily; call
        wait_until_ready() to know the server is up."""
        if not address:
            raise ValueError("no server address: pass host:port")
        if timeout <= 0 or stream_timeout <= 0:
            raise ValueError("timeouts must be > 0 seconds")
        self.address = address
        self.timeout = timeout
        self.stream_timeout = stream_timeout
        token = token if token is not None else os.environ.get("TLSERVE_TOKEN", "")
        tls_ca_file = tls_ca_file or os.environ.get("TLSERVE_TLS_CA_FILE", "")
        options = [("grpc.max_receive_message_length", MAX_RECEIVE_BYTES)]
        if tls_ca_file:
            with open(tls_ca_file, "rb") as f:
                credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
            self._channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        if token:
            self._channel = grpc.intercept_channel(self._channel, _BearerToken(token))
        self._datasets = dataset_pb2_grpc.DatasetServiceStub(self._channel)
        self._models = model_pb2_grpc.ModelServiceStub(self._channel)
        self._jobs = job_pb2_grpc.JobServiceStub(self._channel)
        self._inference = inference_pb2_grpc.InferenceServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wait_until_ready(self, timeout: float = 30.0) -> None:
        """Blocks until the channel connects; TlserveError(UNAVAILABLE)
        after `timeout` seconds."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise TlserveError(grpc.StatusCode.UNAVAILABLE,
                               f"server at {self.address} not reachable after "
                               f"{timeout:g}s") from None

    def _call(self, method, request, timeout: Optional[float] = None):
        try:
            return method(request, timeout=timeout or self.timeout)
        except grpc.RpcError as e:
            raise TlserveError.from_rpc_error(e) from e

    def _all_pages(self, method, request_type, field: str) -> list:
        items, token = [], ""
        while True:
            page = self._call(method, request_type(page_size=LIST_PAGE_SIZE, page_token=token))
            items.extend(getattr(page, field))
            token = page.next_page_token
            if not token:
                return items

    # --- Datasets ---

    def upload_dataset(self, source: Union[Source, Mapping[str, Source]], name: str, *,
                       format: Optional[str] = None, test: Optional[Source] = None,
                       class_names: Sequence[str] = (),
                       request_id: str = "") -> dataset_pb2.Dataset:
        """Uploads a dataset in 1 MiB chunks; returns it as the server
        stored it (counts per class, warnings).

        `source` is one of:
          - a folder of IDX files with MNIST's names (train-images-idx3-ubyte,
            train-labels-idx1-ubyte, optionally t10k-images-idx3-ubyte and
            t10k-labels-idx1-ubyte; each may end in .gz): format "idx";
          - a tar archive (path or bytes) of class_name/*.png|jpg: format
            "image_folder_tar", with `test` the optional test archive;
          - a CSV file (path or bytes) with a `text` and a `label` column:
            format "text_csv" (the default for a path ending in .csv), with
            `test` the optional test CSV; labels are integers 0..K-1 or
            class names (common/text_dataset.h);
          - a dict of role -> path or bytes, roles as in DatasetPartRole
            ("train_images", "train_labels", "test_images", "test_labels",
            "train_archive", "test_archive", "train_csv", "test_csv").
        `class_names`: IDX, and text CSV with integer labels: names of
        labels 0..K-1. `request_id`: a retry with the same id returns the
        first upload's dataset."""
        format_value = (None if format is None else
                        _enum_value(dataset_pb2.DatasetFormat, format, "dataset format"))
        parts = self._dataset_parts(source, format_value, test)
        if format_value is None:
            format_value = FORMAT_OF_ROLE.get(parts[0][0], dataset_pb2.IDX)
        header = dataset_pb2.DatasetUploadHeader(
            name=name, format=format_value, class_names=list(class_names),
            request_id=request_id)
        for role, blob in parts:
            size, sha256 = blob.digest()
            header.parts.add(role=role, size_bytes=size, sha256=sha256)

        def requests() -> Iterator[dataset_pb2.UploadDatasetRequest]:
            yield dataset_pb2.UploadDatasetRequest(header=header)
            for index, (_, blob) in enumerate(parts):
                for chunk in blob.chunks():
                    yield dataset_pb2.UploadDatasetRequest(
                        chunk=dataset_pb2.DatasetChunk(part_index=index, data=chunk))

        return self._call(self._datasets.UploadDataset, requests(), self.stream_timeout)

    @staticmethod
    def _dataset_parts(source, format: Optional[int], test) -> list:
        in_memory = isinstance(source, (bytes, bytearray, memoryview))
        if format is None and not in_memory and not isinstance(source, Mapping):
            if os.fspath(source).lower().endswith(".csv"):
                format = dataset_pb2.TEXT_CSV
        if isinstance(source, Mapping):
            parts = [(_enum_value(dataset_pb2.DatasetPartRole, role, "part role"), _Blob(s))
                     for role, s in source.items()]
        elif format == dataset_pb2.TEXT_CSV:
            parts = [(dataset_pb2.TRAIN_CSV, _Blob(source))]
            if test is not None:
                parts.append((dataset_pb2.TEST_CSV, _Blob(test)))
            return parts
        elif not in_memory and os.path.isdir(source):
            parts = []
            for role, base in IDX_FILE_NAMES.items():
                for candidate in (base, base + ".gz"):
                    path = os.path.join(source, candidate)
                    if os.path.isfile(path):
                        parts.append((role, _Blob(path)))
                        break
            if not parts:
                raise FileNotFoundError(
                    f"no IDX files ({IDX_FILE_NAMES[dataset_pb2.TRAIN_IMAGES]}[.gz], ...) "
                    f"in '{os.fspath(source)}'")
        else:
            parts = [(dataset_pb2.TRAIN_ARCHIVE, _Blob(source))]
            if test is not None:
                parts.append((dataset_pb2.TEST_ARCHIVE, _Blob(test)))
            return parts
        if test is not None:
            raise ValueError("`test` is for a tar archive or CSV source only")
        return parts

    def get_dataset(self, dataset_id: str) -> dataset_pb2.Dataset:
        return self._call(self._datasets.GetDataset, dataset_pb2.GetDatasetRequest(id=dataset_id))

    def list_datasets(self) -> list:
        """Every dataset (all pages)."""
        return self._all_pages(self._datasets.ListDatasets, dataset_pb2.ListDatasetsRequest,
                               "datasets")

    def delete_dataset(self, dataset_id: str) -> None:
        """FAILED_PRECONDITION while an unfinished job uses it."""
        self._call(self._datasets.DeleteDataset, dataset_pb2.DeleteDatasetRequest(id=dataset_id))

    # --- Backbones and models ---

    def upload_backbone(self, source: Source, name: str,
                        input_spec: Union[common_pb2.InputSpec, Mapping, str, None] = None, *,
                        channels: Optional[int] = None, height: Optional[int] = None,
                        width: Optional[int] = None, mean: Optional[Sequence[float]] = None,
                        std: Optional[Sequence[float]] = None, fit: Optional[str] = None,
                        shorter_side: Optional[int] = None, kind: Optional[str] = None,
                        request_id: str = "") -> model_pb2.Backbone:
        """Uploads a TorchScript feature extractor ([N,C,H,W] floats in
        [0,1] -> [N,D]), or word vectors, from a path or bytes.

        `kind`: "image_torchscript" (the default) or "word_vectors": a
        GloVe text or word2vec binary file (common/word_vectors.h), the
        embedding of text jobs, which takes no input spec.

        An image backbone's input: `input_spec` as an InputSpec, a dict in
        InputSpec's JSON form, or the path of such a JSON file
        (tools/export_backbone.py writes one beside the model); keywords
        override its fields. `mean` and `std` have one value per channel,
        applied inside the model; `fit` is "stretch" (default) or
        "resize_center_crop" (torchvision's Resize(shorter_side) +
        CenterCrop)."""
        kind_value = (model_pb2.BACKBONE_KIND_UNSPECIFIED if kind is None else
                      _enum_value(model_pb2.BackboneKind, kind, "backbone kind"))
        if kind_value == model_pb2.WORD_VECTORS:
            given = [name for name, value in (
                ("input_spec", input_spec), ("channels", channels), ("height", height),
                ("width", width), ("mean", mean), ("std", std), ("fit", fit),
                ("shorter_side", shorter_side)) if value is not None]
            if given:
                raise ValueError(f"word vectors take no input spec; drop "
                                 f"{', '.join(given)}")
        blob = _Blob(source)
        spec = common_pb2.InputSpec()
        try:
            if isinstance(input_spec, common_pb2.InputSpec):
                spec.CopyFrom(input_spec)
            elif isinstance(input_spec, Mapping):
                json_format.ParseDict(dict(input_spec), spec)
            elif input_spec is not None:
                with open(input_spec) as f:
                    json_format.Parse(f.read(), spec)
        except json_format.ParseError as e:
            raise ValueError(f"bad input spec: {e}") from e
        for field, value in (("channels", channels), ("height", height), ("width", width)):
            if value is not None:
                setattr(spec, field, value)
        if mean is not None:
            spec.mean[:] = list(mean)
        if std is not None:
            spec.std[:] = list(std)
        if fit is not None:
            spec.fit.mode = _enum_value(common_pb2.InputFit.Mode, fit, "input fit")
        if shorter_side is not None:
            spec.fit.shorter_side = shorter_side
        size, sha256 = blob.digest()
        with_spec = {} if kind_value == model_pb2.WORD_VECTORS else {"input_spec": spec}
        header = model_pb2.BackboneUploadHeader(name=name, size_bytes=size, sha256=sha256,
                                                request_id=request_id, kind=kind_value,
                                                **with_spec)

        def requests() -> Iterator[model_pb2.UploadBackboneRequest]:
            yield model_pb2.UploadBackboneRequest(header=header)
            for chunk in blob.chunks():
                yield model_pb2.UploadBackboneRequest(chunk=chunk)

        return self._call(self._models.UploadBackbone, requests(), self.stream_timeout)

    def get_backbone(self, backbone_id: str) -> model_pb2.Backbone:
        return self._call(self._models.GetBackbone, model_pb2.GetBackboneRequest(id=backbone_id))

    def list_backbones(self) -> list:
        return self._all_pages(self._models.ListBackbones, model_pb2.ListBackbonesRequest,
                               "backbones")

    def get_model(self, model_id: str) -> model_pb2.Model:
        return self._call(self._models.GetModel, model_pb2.GetModelRequest(id=model_id))

    def list_models(self) -> list:
        return self._all_pages(self._models.ListModels, model_pb2.ListModelsRequest, "models")

    def deploy_model(self, model_id: str, *, max_batch_size: Optional[int] = None,
                     max_queue_delay_us: Optional[int] = None,
                     max_queue_size: Optional[int] = None) -> model_pb2.Model:
        """(Re)deploys a model with these batcher settings (None: the
        server's defaults) and warms it up on a worker, so the next
        predict() does not pay for loading it."""
        serving = model_pb2.ServingConfig()
        if max_batch_size is not None:
            serving.max_batch_size = max_batch_size
        if max_queue_delay_us is not None:
            serving.max_queue_delay_us = max_queue_delay_us
        if max_queue_size is not None:
            serving.max_queue_size = max_queue_size
        # Warm-up may load the model on a worker first: allow at least 2 min.
        return self._call(self._models.DeployModel,
                          model_pb2.DeployModelRequest(id=model_id, serving=serving),
                          max(self.timeout, 120.0))

    def delete_model(self, model_id: str) -> None:
        """Deletes an undeployed model (FAILED_PRECONDITION while
        deployed)."""
        self._call(self._models.DeleteModel, model_pb2.DeleteModelRequest(id=model_id))

    def undeploy_model(self, model_id: str) -> model_pb2.Model:
        """Stops serving it (predict() then fails with FAILED_PRECONDITION)."""
        return self._call(self._models.UndeployModel, model_pb2.UndeployModelRequest(id=model_id))

    def export_model(self, model_id: str, path: Optional[str] = None) -> bytes:
        """The model's TorchScript file, checked against the size and sha256
        the server announces. With `path`, also written there atomically."""
        data = bytearray()
        expected_size, expected_sha256 = -1, ""
        try:
            for chunk in self._models.ExportModel(model_pb2.ExportModelRequest(id=model_id),
                                                  timeout=self.stream_timeout):
                if expected_size < 0:
                    expected_size, expected_sha256 = chunk.total_bytes, chunk.sha256
                data += chunk.data
        except grpc.RpcError as e:
            raise TlserveError.from_rpc_error(e) from e
        if expected_size < 0 or len(data) != expected_size or (
                expected_sha256 and hashlib.sha256(data).hexdigest() != expected_sha256):
            raise TlserveError(grpc.StatusCode.DATA_LOSS,
                               f"export of model '{model_id}': got {len(data)} bytes, the server "
                               f"announced {expected_size} (sha256 {expected_sha256}); retry")
        if path is not None:
            folder = os.path.dirname(os.path.abspath(path))
            with tempfile.NamedTemporaryFile(dir=folder, delete=False) as f:
                f.write(data)
            os.replace(f.name, path)
        return bytes(data)

    # --- Jobs ---

    def create_job(self, spec: Union[job_pb2.JobSpec, Mapping, None] = None, *,
                   dataset_id: Optional[str] = None, backbone_id: Optional[str] = None,
                   request_id: str = "", **fields) -> job_pb2.Job:
        """Submits a job; returns it (VALIDATING or QUEUED).

        The spec is a JobSpec, or a dict in JobSpec's field names, plus
        keyword fields merged over it, nested as dicts and enums by name:

            client.create_job(dataset_id=ds.id, backbone_id=bb.id, epochs=5,
                              data={"class_subset": [2, 3], "samples_per_class": 50},
                              freeze={"mode": "FROZEN"},
                              optimizer={"kind": "ADAMW", "learning_rate": 1e-2})

        `dataset_id` sets data.dataset_id. kind defaults to FINE_TUNE."""
        message = job_pb2.JobSpec()
        try:
            if isinstance(spec, job_pb2.JobSpec):
                message.CopyFrom(spec)
            elif spec is not None:
                json_format.ParseDict(dict(spec), message)
            if fields:
                json_format.ParseDict(fields, message)
        except json_format.ParseError as e:
            raise ValueError(f"bad job spec: {e}") from e
        if dataset_id is not None:
            message.data.dataset_id = dataset_id
        if backbone_id is not None:
            message.backbone_id = backbone_id
        if message.kind == job_pb2.JOB_KIND_UNSPECIFIED:
            message.kind = job_pb2.FINE_TUNE
        return self._call(self._jobs.CreateJob,
                          job_pb2.CreateJobRequest(spec=message, request_id=request_id))

    def get_job(self, job_id: str) -> job_pb2.Job:
        return self._call(self._jobs.GetJob, job_pb2.GetJobRequest(id=job_id))

    def list_jobs(self, state: Optional[str] = None) -> list:
        """Every job, or those in `state` ("queued", "running", ...)."""
        state_value = 0 if state is None else _enum_value(job_pb2.JobState, state, "job state")
        jobs, token = [], ""
        while True:
            page = self._call(self._jobs.ListJobs, job_pb2.ListJobsRequest(
                state=state_value, page_size=LIST_PAGE_SIZE, page_token=token))
            jobs.extend(page.jobs)
            token = page.next_page_token
            if not token:
                return jobs

    def delete_job(self, job_id: str) -> None:
        """Deletes a finished job with its events and checkpoints
        (FAILED_PRECONDITION before it has finished); its model stays."""
        self._call(self._jobs.DeleteJob, job_pb2.DeleteJobRequest(id=job_id))

    def cancel_job(self, job_id: str) -> job_pb2.Job:
        return self._call(self._jobs.CancelJob, job_pb2.CancelJobRequest(id=job_id))

    def watch(self, job_id: str, *, progress: bool = True, out: Optional[TextIO] = None,
              on_event: Optional[Callable[[job_pb2.JobEvent], Optional[bool]]] = None,
              timeout: Optional[float] = None, max_reconnects: int = 8) -> job_pb2.Job:
        """Follows a job until it ends and returns it as get_job() then sees
        it: check job.state (SUCCEEDED, FAILED or CANCELLED) and job.error.

        `progress`: draw a progress bar and a line per epoch and state
        change on `out` (default stderr). `on_event`: called with each
        JobEvent; returning False stops watching early (the job goes on).
        `timeout`: seconds in all, then TlserveError(DEADLINE_EXCEEDED).
        A stream that breaks with UNAVAILABLE or CANCELLED (e.g. the server
        restarting) is re-opened after the last event seen, up to `max_reconnects`
        times in a row."""
        printer = ProgressPrinter(out or sys.stderr) if progress else None
        deadline = None if timeout is None else time.monotonic() + timeout
        last_sequence, failures, backoff = 0, 0, 0.25
        try:
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TlserveError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                       f"job '{job_id}' did not finish within {timeout:g}s")
                stream = self._jobs.WatchJob(
                    job_pb2.WatchJobRequest(id=job_id, after_sequence=last_sequence),
                    timeout=remaining)
                try:
                    for event in stream:
                        last_sequence = max(last_sequence, event.sequence)
                        failures, backoff = 0, 0.25
                        if printer:
                            printer.on_event(event)
                        if on_event is not None and on_event(event) is False:
                            stream.cancel()
                            return self.get_job(job_id)
                except grpc.RpcError as e:
                    # CANCELLED without our cancel: a server shutting down
                    # when the call reached it; the next one may answer.
                    if e.code() not in (grpc.StatusCode.UNAVAILABLE,
                                        grpc.StatusCode.CANCELLED):
                        raise TlserveError.from_rpc_error(e) from e
                    reason = e.details()
                else:
                    job = self.get_job(job_id)
                    if job.state in FINAL_STATES:
                        return job
                    reason = "watch stream ended before the job did"
                failures += 1
                if failures > max_reconnects:
                    raise TlserveError(grpc.StatusCode.UNAVAILABLE,
                                       f"watching job '{job_id}': gave up after "
                                       f"{max_reconnects} reconnects: {reason}")
                time.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
        finally:
            if printer:
                printer.finish()

    def wait(self, job_id: str, timeout: Optional[float] = None) -> job_pb2.Job:
        """watch() without output."""
        return self.watch(job_id, progress=False, timeout=timeout)

    # --- Inference ---

    def predict(self, model_id: str, images: Optional[Iterable[Source]] = None, *,
                texts: Optional[Iterable[str]] = None, top_k: int = 5,
                timeout: Optional[float] = None) -> list:
        """Classifies encoded images (PNG or JPEG bytes, or their paths), or
        for a text model (Model.text set) `texts`; returns one Prediction
        per input, in order. The server fits each image to the model's
        input, and tokenises each text, as training did.

        Errors: NOT_FOUND (unknown model), INVALID_ARGUMENT (an image that
        does not decode, texts for an image model or images for a text
        one), FAILED_PRECONDITION (undeployed), RESOURCE_EXHAUSTED (queue
        full), UNAVAILABLE (no worker)."""
        request = inference_pb2.PredictRequest(model_id=model_id, top_k=top_k)
        self._set_inputs(request, images, texts)
        response = self._call(self._inference.Predict, request, timeout)
        return [Prediction(top=[ClassScore(c.index, c.label, c.probability) for c in p.top],
                           probabilities=list(p.probabilities))
                for p in response.predictions]

    def embed(self, model_id: str, images: Optional[Iterable[Source]] = None, *,
              texts: Optional[Iterable[str]] = None,
              timeout: Optional[float] = None) -> list:
        """The backbone's features (before the head), one list per image,
        or per text of `texts` for a text model (its pooled word
        vectors)."""
        request = inference_pb2.EmbedRequest(model_id=model_id)
        self._set_inputs(request, images, texts)
        response = self._call(self._inference.Embed, request, timeout)
        return [list(e.values) for e in response.embeddings]

    @staticmethod
    def _set_inputs(request, images, texts) -> None:
        """Fills a Predict or Embed request with exactly one kind of
        input."""
        if (images is None) == (texts is None):
            raise ValueError("pass images or texts (one of them)")
        if texts is not None:
            # One text passed bare would otherwise be iterated letter by letter.
            if isinstance(texts, str):
                texts = [texts]
            texts = list(texts)
            for i, text in enumerate(texts):
                if not isinstance(text, str):
                    raise ValueError(f"texts[{i}] is a {type(text).__name__}, not a str")
            request.texts.extend(texts)
            return
        # One image passed bare would otherwise be iterated byte by byte.
        if isinstance(images, (bytes, bytearray, memoryview, str, os.PathLike)):
            images = [images]
        request.images.extend(_read_image(i) for i in images)
