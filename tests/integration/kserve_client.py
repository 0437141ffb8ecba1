#!/usr/bin/python3
"""A KServe v2 (inference.GRPCInferenceService) client in Python, as a team
used to Triton would write one, run by the end-to-end test against a live
tlserve: stubs generated from tlserve's proto/inference/*.proto with protoc
and Debian's grpc_python_plugin, then every RPC, good and bad input.

Prints one JSON object with what it saw; the C++ test asserts on it.
  kserve_client.py --target 127.0.0.1:PORT --model MODEL_ID \
      --proto_dir SRC/proto --input FILE.f32 --shape 2,3,32,32
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy


def generate_stubs(proto_dir: str, out_dir: str) -> None:
    protos = [os.path.join(proto_dir, "inference", name)
              for name in ("grpc_service.proto", "model_config.proto")]
    subprocess.run(
        ["protoc", f"--proto_path={proto_dir}", f"--python_out={out_dir}",
         f"--grpc_python_out={out_dir}",
         "--plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin"] + protos,
        check=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--proto_dir", required=True)
    parser.add_argument("--input", required=True, help="raw little-endian FP32")
    parser.add_argument("--shape", required=True, help="N,C,H,W")
    args = parser.parse_args()

    gen = tempfile.mkdtemp(prefix="kserve_stubs_")
    generate_stubs(args.proto_dir, gen)
    sys.path.insert(0, gen)
    import grpc  # noqa: E402
    from inference import grpc_service_pb2 as pb  # noqa: E402
    from inference import grpc_service_pb2_grpc as pb_grpc  # noqa: E402

    channel = grpc.insecure_channel(args.target)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    out = {}
    out["live"] = stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
    out["ready"] = stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
    meta = stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=10)
    out["server_name"] = meta.name
    out["extensions"] = list(meta.extensions)
    out["model_ready"] = stub.ModelReady(
        pb.ModelReadyRequest(name=args.model), timeout=10).ready
    out["unknown_model_ready"] = stub.ModelReady(
        pb.ModelReadyRequest(name="model-missing"), timeout=10).ready
    model_meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=args.model),
                                    timeout=10)
    out["input_shape"] = list(model_meta.inputs[0].shape)
    out["output_names"] = [o.name for o in model_meta.outputs]
    config = stub.ModelConfig(pb.ModelConfigRequest(name=args.model),
                              timeout=10).config
    out["max_batch_size"] = config.max_batch_size

    shape = [int(d) for d in args.shape.split(",")]
    data = numpy.fromfile(args.input, dtype="<f4").reshape(shape)

    def request(**changes):
        tensor = pb.ModelInferRequest.InferInputTensor(
            name="input", datatype=changes.get("datatype", "FP32"),
            shape=changes.get("shape", shape))
        r = pb.ModelInferRequest(model_name=changes.get("model", args.model),
                                 model_version=changes.get("version", ""),
                                 id="req-1", inputs=[tensor])
        for name in changes.get("outputs", []):
            r.outputs.add(name=name)
        if changes.get("typed"):
            tensor.contents.fp32_contents.extend(data.flatten().tolist())
            r.inputs[0].CopyFrom(tensor)
        else:
            r.raw_input_contents.append(changes.get("raw", data.tobytes()))
        return r

    def tensors(response):
        result = {}
        for i, o in enumerate(response.outputs):
            values = numpy.frombuffer(response.raw_output_contents[i], dtype="<f4")
            result[o.name] = values.reshape(list(o.shape))
        return result

    response = stub.ModelInfer(request(), timeout=60)
    got = tensors(response)
    out["id"] = response.id
    out["output_shapes"] = {k: list(v.shape) for k, v in got.items()}
    out["probabilities"] = got["probabilities"].flatten().tolist()
    out["features_l1"] = numpy.abs(got["features"]).sum(axis=1).tolist()
    typed = tensors(stub.ModelInfer(
        request(typed=True, outputs=["probabilities"]), timeout=60))
    out["typed_outputs"] = sorted(typed)
    out["typed_max_diff"] = float(numpy.abs(
        typed["probabilities"] - got["probabilities"]).max())

    def code_of(**changes):
        try:
            stub.ModelInfer(request(**changes), timeout=60)
            return "OK"
        except grpc.RpcError as e:
            return e.code().name

    out["errors"] = {
        "unknown_model": code_of(model="model-missing"),
        "bad_version": code_of(version="7"),
        "bad_datatype": code_of(datatype="INT64"),
        "wrong_shape": code_of(shape=[shape[0], shape[1], shape[2] + 1, shape[3]],
                               raw=numpy.zeros([shape[0], shape[1], shape[2] + 1,
                                                shape[3]], "<f4").tobytes()),
        "short_data": code_of(raw=b"\0" * 8),
        "unknown_output": code_of(outputs=["logits"]),
    }
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name=args.model),
                                 timeout=10).model_stats[0]
    out["stats"] = {
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        "success_count": stats.inference_stats.success.count,
        "fail_count": stats.inference_stats.fail.count,
        "batch_sizes": [b.batch_size for b in stats.batch_stats],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
