#!/usr/bin/python3
"""The peer for bench/run_inference_bench.sh: InferenceService in plain Python.

What a team would write instead of running tlserve: a grpcio server with a
futures.ThreadPoolExecutor, implementing the same tlserve.v1.InferenceService
Predict on the model file `tlctl model export` wrote. It loads the file with
torch.jit.load, preprocesses like the service (decode; bilinear resize of
the 8-bit image to the model's input size, align_corners=False; gray -> RGB
by repetition, RGB -> gray by the channel mean; float in [0, 1]; the model
normalises inside), runs forward under torch.inference_mode, and returns
softmax probabilities and the top k. No batching across calls: each call
runs its own forward on a pool thread, as a typical script does.

The Python stubs are generated at start into a temporary folder with protoc
and Debian's grpc_python_plugin (nothing generated is committed).

  /usr/bin/python3 bench/inference_peer_server.py --model model.pt \
      --model_json model.json --port 0 --port_file /tmp/peer.port

--model_json is `tlctl --json model get ID` (input_spec, class_names); or
give --channels/--height/--width. Listens on 127.0.0.1 only. Stops on
SIGTERM or SIGINT.
"""
import argparse
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from concurrent import futures

import grpc
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TOP_K = 5


def generate_stubs(proto_dir, out_dir):
    """Runs protoc for the protos Predict needs; returns the import root."""
    protos = ["tlserve/v1/common.proto", "tlserve/v1/inference.proto"]
    plugin = shutil.which("grpc_python_plugin") or "/usr/bin/grpc_python_plugin"
    cmd = ["protoc", f"--proto_path={proto_dir}", f"--python_out={out_dir}",
           f"--grpc_python_out={out_dir}",
           f"--plugin=protoc-gen-grpc_python={plugin}"] + protos
    subprocess.run(cmd, check=True)
    return out_dir


class PredictError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def image_to_array(data, channels, height, width):
    """Encoded bytes -> uint8 [C, H, W] at the model's size, like the worker."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:  # PIL raises many types for bad input
        raise PredictError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"cannot decode image: {e}")
    gray = img.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "F")
    if img.mode in ("I", "I;16", "I;16B", "F"):
        # 16-bit samples are cut to 8 bits, like the service's decoder.
        arr = (np.asarray(img, dtype=np.uint32) >> 8).astype(np.uint8)
    else:
        arr = np.asarray(img.convert("L" if gray else "RGB"), dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[0] != height or arr.shape[1] != width:
        t = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float()
        t = F.interpolate(t, size=(height, width), mode="bilinear",
                          align_corners=False)
        arr = t[0].round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    c_in = arr.shape[2]
    if c_in == channels:
        out = arr
    elif c_in == 1:
        out = np.repeat(arr, channels, axis=2)
    else:
        out = np.rint(arr.astype(np.float32).mean(axis=2, keepdims=True)).astype(np.uint8)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


class InferencePeer:
    def __init__(self, pb2, model_path, model_id, spec, class_names):
        self.pb2 = pb2
        self.model_id = model_id
        self.channels, self.height, self.width = spec
        self.class_names = class_names
        self.module = torch.jit.load(model_path)
        self.module.eval()

    def inputs(self, request):
        has_tensor = len(request.tensor.shape) > 0 or len(request.tensor.contents) > 0
        if bool(request.images) == has_tensor:
            raise PredictError(grpc.StatusCode.INVALID_ARGUMENT,
                               "give images or a tensor, not both or neither")
        if request.images:
            arrays = [image_to_array(b, self.channels, self.height, self.width)
                      for b in request.images]
            return torch.from_numpy(np.stack(arrays)).float().div_(255)
        t = request.tensor
        shape = list(t.shape)
        if (len(shape) != 4 or shape[0] < 1 or
                shape[1:] != [self.channels, self.height, self.width]):
            raise PredictError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"tensor: shape {shape} does not match [N, "
                               f"{self.channels}, {self.height}, {self.width}]")
        dtype = {"FP32": np.dtype("<f4"), "UINT8": np.dtype(np.uint8)}.get(t.dtype)
        if dtype is None:
            raise PredictError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"tensor: dtype '{t.dtype}' is not FP32 or UINT8")
        count = int(np.prod(shape))
        if len(t.contents) != count * dtype.itemsize:
            raise PredictError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"tensor: {len(t.contents)} bytes for shape {shape}")
        x = torch.from_numpy(np.frombuffer(t.contents, dtype=dtype).reshape(shape).copy())
        return x.float().div_(255) if t.dtype == "UINT8" else x

    def Predict(self, request, context):
        try:
            if self.model_id and request.model_id != self.model_id:
                raise PredictError(grpc.StatusCode.NOT_FOUND,
                                   f"model {request.model_id} not found")
            if request.top_k < 0:
                raise PredictError(grpc.StatusCode.INVALID_ARGUMENT,
                                   "top_k must be >= 0")
            x = self.inputs(request)
            with torch.inference_mode():
                probs = torch.softmax(self.module(x).float(), dim=1)
            k = min(request.top_k or DEFAULT_TOP_K, probs.shape[1])
            top_p, top_i = torch.topk(probs, k, dim=1)
        except PredictError as e:
            context.abort(e.code, str(e))
        except Exception as e:  # a model error is the server's fault
            context.abort(grpc.StatusCode.INTERNAL, f"running the model: {e}")
        response = self.pb2.PredictResponse(model_id=request.model_id,
                                            worker_id="python-peer")
        for row, ps, idx in zip(probs.tolist(), top_p.tolist(), top_i.tolist()):
            pred = response.predictions.add()
            pred.probabilities.extend(row)
            for p, i in zip(ps, idx):
                label = self.class_names[i] if self.class_names else str(i)
                pred.top.add(index=i, label=label, probability=p)
        return response

    def Embed(self, request, context):
        try:
            if self.model_id and request.model_id != self.model_id:
                raise PredictError(grpc.StatusCode.NOT_FOUND,
                                   f"model {request.model_id} not found")
            x = self.inputs(request)
            with torch.inference_mode():
                features = self.module.features(x).float()
        except PredictError as e:
            context.abort(e.code, str(e))
        except Exception as e:  # a model error is the server's fault
            context.abort(grpc.StatusCode.INTERNAL, f"running the model: {e}")
        response = self.pb2.EmbedResponse(model_id=request.model_id,
                                          worker_id="python-peer")
        for row in features.tolist():
            response.embeddings.add().values.extend(row)
        return response


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="exported TorchScript file")
    p.add_argument("--model_json", help="`tlctl --json model get ID` output")
    p.add_argument("--model_id", default="",
                   help="answer only this model_id (default: from --model_json, "
                        "else any)")
    p.add_argument("--channels", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--port_file", help="write the chosen port here once serving")
    p.add_argument("--workers", type=int, default=None,
                   help="ThreadPoolExecutor max_workers (default: Python's, "
                        "min(32, cores + 4))")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--proto_dir", default=os.path.join(REPO, "proto"))
    args = p.parse_args()

    spec = {}
    class_names = []
    model_id = args.model_id
    if args.model_json:
        with open(args.model_json) as f:
            meta = json.load(f)
        spec = meta.get("inputSpec", meta.get("input_spec", {}))
        class_names = list(meta.get("classNames", meta.get("class_names", [])))
        model_id = model_id or meta.get("id", "")
    channels = args.channels or spec.get("channels")
    height = args.height or spec.get("height")
    width = args.width or spec.get("width")
    if not (channels and height and width):
        p.error("give --model_json or --channels, --height and --width")

    torch.set_num_threads(args.threads)
    gen_dir = tempfile.mkdtemp(prefix="tlserve_peer_stubs_")
    try:
        sys.path.insert(0, generate_stubs(args.proto_dir, gen_dir))
        from tlserve.v1 import inference_pb2, inference_pb2_grpc

        peer = InferencePeer(inference_pb2, args.model, model_id,
                             (int(channels), int(height), int(width)), class_names)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=args.workers),
            options=[("grpc.max_receive_message_length", -1),
                     ("grpc.max_send_message_length", -1)])
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(peer, server)
        port = server.add_insecure_port(f"127.0.0.1:{args.port}")
        if port == 0:
            sys.exit(f"inference_peer_server: cannot bind 127.0.0.1:{args.port}")
        server.start()
        if args.port_file:
            with open(args.port_file + ".tmp", "w") as f:
                f.write(f"{port}\n")
            os.rename(args.port_file + ".tmp", args.port_file)
        print(f"inference_peer_server: serving {args.model} on 127.0.0.1:{port} "
              f"({args.threads} torch threads)", file=sys.stderr, flush=True)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        # A timed wait: an untimed one does not wake for the handler here.
        while not stop.wait(0.5):
            pass
        server.stop(grace=1).wait()
    finally:
        shutil.rmtree(gen_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
