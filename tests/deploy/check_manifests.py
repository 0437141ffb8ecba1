#!/usr/bin/python3
"""Renders deploy/'s kustomize overlays, lints them and checks their shape.

Usage: check_manifests.py SOURCE_DIR

Renders deploy/overlays/{cpu,gpu} with `kubectl kustomize`, runs yamllint on
deploy/ and on each rendered overlay, and checks what a cluster operator
relies on: one server replica on a PersistentVolumeClaim mounted at its data
dir, a Service for gRPC and metrics, gRPC health probes, workers on the
right device, resources, a PodDisruptionBudget, graceful termination and
non-root pods.

Without kubectl the render is skipped (exit 77, which ctest reports as
skipped) after the same checks ran on an approximate render of the source
files, so a broken manifest still fails.
"""

import copy
import os
import re
import shutil
import subprocess
import sys

try:
    import yaml
except ImportError:  # python3-yaml comes with scripts/install-deps.sh
    print("SKIP: /usr/bin/python3 has no PyYAML (Debian: python3-yaml)")
    sys.exit(77)

SKIP = 77
OVERLAYS = ("cpu", "gpu")
NAMESPACE = "tlserve"

failures = []


def fail(where, message):
    failures.append(f"{where}: {message}")


# --- rendering -------------------------------------------------------------


def render_with_kubectl(kubectl, overlay_dir):
    result = subprocess.run([kubectl, "kustomize", overlay_dir],
                            capture_output=True, text=True)
    if result.returncode != 0:
        fail(overlay_dir, f"kubectl kustomize failed:\n{result.stderr}")
        return None
    return result.stdout


def load_yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def merge_patch(base, patch):
    """Strategic merge as kustomize does it for the fields deploy/ patches:
    maps merge, lists of named maps merge by name, other lists replace."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = merge_patch(base[key], value) if key in base else value
        return merged
    if (isinstance(base, list) and isinstance(patch, list) and
            all(isinstance(x, dict) and "name" in x for x in base + patch)):
        merged = [dict(x) for x in base]
        for item in patch:
            same = [i for i, x in enumerate(merged) if x["name"] == item["name"]]
            if same:
                merged[same[0]] = merge_patch(merged[same[0]], item)
            else:
                merged.append(item)
        return merged
    return patch


def render_approximately(overlay_dir):
    """A stand-in for `kubectl kustomize` when there is none: resources,
    configMapGenerator literals, images, namespace and strategic-merge
    patches, which is all deploy/ uses. Generated names get no hash."""

    def build(directory):
        kustomization = load_yaml_docs(os.path.join(directory, "kustomization.yaml"))[0]
        docs = []
        for entry in kustomization.get("bases", []) + kustomization.get("resources", []):
            path = os.path.normpath(os.path.join(directory, entry))
            docs += build(path) if os.path.isdir(path) else load_yaml_docs(path)
        for generator in kustomization.get("configMapGenerator", []):
            data = dict(l.split("=", 1) for l in generator.get("literals", []))
            docs.append({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": generator["name"]}, "data": data})
        for patch_file in kustomization.get("patchesStrategicMerge", []):
            for patch in load_yaml_docs(os.path.join(directory, patch_file)):
                for i, doc in enumerate(docs):
                    if (doc["kind"], doc["metadata"]["name"]) == \
                            (patch["kind"], patch["metadata"]["name"]):
                        docs[i] = merge_patch(doc, patch)
        for image in kustomization.get("images", []):
            for container in all_containers(docs):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = (image.get("newName", name) + ":" +
                                          str(image.get("newTag", tag)))
        if "namespace" in kustomization:
            for doc in docs:
                doc["metadata"]["namespace"] = kustomization["namespace"]
        return docs

    return yaml.safe_dump_all(copy.deepcopy(build(overlay_dir)))


# --- helpers ---------------------------------------------------------------


def pod_specs(docs):
    for doc in docs:
        if doc.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield doc, doc["spec"]["template"]["spec"]


def all_containers(docs):
    for _, spec in pod_specs(docs):
        yield from spec.get("initContainers", []) + spec.get("containers", [])


def find(docs, kind, name=None, prefix=None):
    for doc in docs:
        if doc.get("kind") != kind:
            continue
        doc_name = doc["metadata"]["name"]
        if name is not None and doc_name == name:
            return doc
        if prefix is not None and doc_name.startswith(prefix):
            return doc
    return None


def flag_value(args, flag):
    for arg in args:
        if arg.startswith(f"--{flag}="):
            return arg.split("=", 1)[1]
    return None


def env_values(where, container, docs):
    """Env vars as the kubelet sees them: envFrom ConfigMaps, then env."""
    values = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref is None:
            continue
        config_map = find(docs, "ConfigMap", name=ref["name"])
        if config_map is None:
            fail(f"{where} {container['name']}", f"envFrom names ConfigMap {ref['name']!r}, "
                 "which the render does not contain")
            continue
        values.update(config_map.get("data", {}))
    for var in container.get("env", []):
        values[var["name"]] = var.get("value", "<from " + ",".join(var) + ">")
    return values


def expanded_args(where, container, docs):
    """Args with $(VAR) replaced as Kubernetes does; unknown vars fail."""
    values = env_values(where, container, docs)
    args = []
    for arg in container.get("args", []):
        for var in re.findall(r"\$\((\w+)\)", arg):
            if var not in values:
                fail(f"{where} {container['name']}", f"arg {arg!r} uses $({var}), which no env "
                     "var or ConfigMap key defines")
        args.append(re.sub(r"\$\((\w+)\)",
                           lambda m: str(values.get(m.group(1), m.group(0))), arg))
    return args


def labels_match(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def port_of(address):
    return int(address.rsplit(":", 1)[1])


# --- the checks ------------------------------------------------------------


def check_server(where, docs):
    server = find(docs, "Deployment", name="tlserve")
    if server is None:
        fail(where, "no Deployment tlserve")
        return
    spec = server["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"].get("labels", {})
    if spec.get("replicas") != 1:
        fail(where, f"server replicas {spec.get('replicas')}: the SQLite store allows one")
    if spec.get("strategy", {}).get("type") != "Recreate":
        fail(where, "server strategy is not Recreate: a rolling update would run two "
             "servers on one store")
    containers = [c for c in pod["containers"] if c["name"] == "server"]
    if not containers:
        fail(where, "server Deployment has no container named server")
        return
    container = containers[0]
    args = expanded_args(where, container, docs)

    data_dir = flag_value(args, "data_dir")
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    if data_dir is None:
        fail(where, "server has no --data_dir")
    elif claims.get(mounts.get(data_dir)) is None:
        fail(where, f"--data_dir {data_dir} is not a PersistentVolumeClaim mount")
    elif find(docs, "PersistentVolumeClaim", name=claims[mounts[data_dir]]) is None:
        fail(where, f"PersistentVolumeClaim {claims[mounts[data_dir]]} is not in the render")

    listen = flag_value(args, "listen")
    metrics = flag_value(args, "metrics_listen")
    if listen is None or metrics is None:
        fail(where, "server needs --listen and --metrics_listen")
        return
    grpc_port, metrics_port = port_of(listen), port_of(metrics)
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    if ports.get("grpc") != grpc_port or ports.get("metrics") != metrics_port:
        fail(where, f"container ports {ports} do not match --listen {listen} and "
             f"--metrics_listen {metrics}")

    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        grpc = container.get(probe, {}).get("grpc")
        if grpc is None:
            if probe != "startupProbe":
                fail(where, f"server {probe} is not a gRPC (grpc.health.v1) probe")
        elif grpc.get("port") != grpc_port:
            fail(where, f"server {probe} checks port {grpc.get('port')}, "
                 f"gRPC listens on {grpc_port}")

    service = find(docs, "Service", name="tlserve")
    if service is None:
        fail(where, "no Service tlserve")
    else:
        if not labels_match(service["spec"].get("selector", {}), pod_labels) or \
                not service["spec"].get("selector"):
            fail(where, "Service tlserve does not select the server pods")
        targets = {p.get("targetPort") for p in service["spec"].get("ports", [])}
        for name, number in (("grpc", grpc_port), ("metrics", metrics_port)):
            if name not in targets and number not in targets:
                fail(where, f"Service tlserve does not expose the {name} port")

    annotations = spec["template"]["metadata"].get("annotations", {})
    scraped = (annotations.get("prometheus.io/scrape") == "true" and
               annotations.get("prometheus.io/port") == str(metrics_port) and
               annotations.get("prometheus.io/path", "/metrics") == "/metrics")
    if not scraped and find(docs, "PodMonitor", prefix="") is None:
        fail(where, "server metrics are neither annotated for scraping on "
             f"{metrics_port} nor selected by a PodMonitor")


def check_worker(where, docs, overlay):
    worker = find(docs, "Deployment", name="tlworker")
    if worker is None:
        fail(where, "no Deployment tlworker")
        return
    containers = [c for c in worker["spec"]["template"]["spec"]["containers"]
                  if c["name"] == "worker"]
    if not containers:
        fail(where, "worker Deployment has no container named worker")
        return
    container = containers[0]
    args = expanded_args(where, container, docs)
    device = flag_value(args, "device")
    gpus = {k: str(v.get("nvidia.com/gpu"))
            for k, v in container.get("resources", {}).items()}
    if overlay == "gpu":
        if device != "cuda:0":
            fail(where, f"gpu worker runs --device={device}, expected cuda:0")
        if gpus.get("limits") != "1":
            fail(where, "gpu worker does not limit nvidia.com/gpu to 1")
        if "cuda" not in container.get("image", ""):
            fail(where, f"gpu worker image {container.get('image')} is not a CUDA build")
    else:
        if device != "cpu":
            fail(where, f"cpu worker runs --device={device}")
        if any(v != "None" for v in gpus.values()):
            fail(where, "cpu worker asks for a GPU")
    # The worker finds the server through $TLSERVE_SERVER or --server.
    server_address = flag_value(args, "server") or env_values(where, container, docs).get("TLSERVE_SERVER")
    service = find(docs, "Service", name="tlserve")
    if server_address is None:
        fail(where, "worker has neither --server nor TLSERVE_SERVER")
    elif service is not None:
        host, port = server_address.rsplit(":", 1)
        service_ports = [p["port"] for p in service["spec"]["ports"]]
        if host.split(".")[0] != "tlserve" or int(port) not in service_ports:
            fail(where, f"workers dial {server_address}, which is not the tlserve Service")
    # The worker's own /metrics: listened on and annotated for the scrape.
    listen = flag_value(args, "metrics_listen")
    annotations = worker["spec"]["template"]["metadata"].get("annotations", {})
    if not listen:
        fail(where, "worker does not serve /metrics (no --metrics_listen)")
    else:
        port = listen.rsplit(":", 1)[1]
        if annotations.get("prometheus.io/scrape") != "true" or \
                annotations.get("prometheus.io/port") != port:
            fail(where, f"worker metrics on {port} are not annotated for scraping")
        if int(port) not in [p.get("containerPort") for p in container.get("ports", [])]:
            fail(where, f"worker container does not declare its metrics port {port}")
    budget = find(docs, "PodDisruptionBudget", prefix="")
    pod_labels = worker["spec"]["template"]["metadata"].get("labels", {})
    if budget is None:
        fail(where, "no PodDisruptionBudget")
    elif not labels_match(budget["spec"]["selector"].get("matchLabels", {}), pod_labels):
        fail(where, f"PodDisruptionBudget {budget['metadata']['name']} does not select "
             "the workers")


def check_every_pod(where, docs):
    for owner, pod in pod_specs(docs):
        name = f"{where} {owner['kind']} {owner['metadata']['name']}"
        grace = pod.get("terminationGracePeriodSeconds")
        if not isinstance(grace, int) or grace <= 0:
            fail(name, "terminationGracePeriodSeconds is not set")
        pod_non_root = pod.get("securityContext", {}).get("runAsNonRoot") is True
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod.get("initContainers", []) + pod["containers"]:
            cname = f"{name} container {container['name']}"
            security = container.get("securityContext", {})
            if not (pod_non_root or security.get("runAsNonRoot") is True):
                fail(cname, "runAsNonRoot is not set")
            if security.get("allowPrivilegeEscalation") is not False:
                fail(cname, "allowPrivilegeEscalation is not false")
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in resources.get(kind, {}):
                        fail(cname, f"no {kind}.{resource}")
            image = container.get("image", "")
            if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
                fail(cname, f"image {image!r} has no pinned tag")
            for mount in container.get("volumeMounts", []):
                volume = volumes.get(mount["name"])
                if volume is None:
                    fail(cname, f"mounts volume {mount['name']!r}, which the pod lacks")
                elif "secret" in volume and find(
                        docs, "Secret", name=volume["secret"]["secretName"]) is None:
                    fail(cname, f"secret {volume['secret']['secretName']} is not in the render")


def check_config(where, docs):
    if find(docs, "ConfigMap", prefix="tlserve-config") is None:
        fail(where, "no ConfigMap tlserve-config")
    for name in ("tlserve-auth", "tlserve-tls"):
        secret = find(docs, "Secret", name=name)
        if secret is None:
            fail(where, f"no Secret {name}")
            continue
        # Committed Secrets must be visibly fake, never real credentials.
        values = list(secret.get("stringData", {}).values()) + list(secret.get("data", {}).values())
        if "data" in secret or not values or not all("REPLACE-ME" in v for v in values):
            fail(where, f"Secret {name}: every value must be a REPLACE-ME placeholder")
        if "placeholder" not in str(secret["metadata"].get("annotations", {})):
            fail(where, f"Secret {name} is not annotated as a placeholder")
    for doc in docs:
        if doc["kind"] != "Namespace" and doc["metadata"].get("namespace") != NAMESPACE:
            fail(where, f"{doc['kind']} {doc['metadata']['name']} is not in namespace "
                 f"{NAMESPACE}")


def yamllint(deploy_dir, label, text=None):
    command = ["yamllint", "--strict", "-c", os.path.join(deploy_dir, ".yamllint")]
    result = subprocess.run(command + (["-"] if text is not None else [deploy_dir]),
                            input=text, capture_output=True, text=True)
    if result.returncode != 0:
        fail(label, f"yamllint:\n{result.stdout}{result.stderr}")


def main():
    source_dir = sys.argv[1]
    deploy_dir = os.path.join(source_dir, "deploy")
    if shutil.which("yamllint") is None:
        print("FAIL: yamllint is not installed (scripts/install-deps.sh installs it)")
        return 1
    yamllint(deploy_dir, "deploy/")

    kubectl = shutil.which("kubectl")
    for overlay in OVERLAYS:
        overlay_dir = os.path.join(deploy_dir, "overlays", overlay)
        where = f"overlays/{overlay}"
        text = (render_with_kubectl(kubectl, overlay_dir) if kubectl
                else render_approximately(overlay_dir))
        if text is None:
            continue
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
        yamllint(deploy_dir, f"{where} (rendered)", text)
        check_server(where, docs)
        check_worker(where, docs, overlay)
        check_every_pod(where, docs)
        check_config(where, docs)
        print(f"{where}: {len(docs)} objects: " +
              ", ".join(sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)))

    if failures:
        print("FAIL:\n  " + "\n  ".join(failures))
        return 1
    if kubectl is None:
        print("SKIP: no kubectl, so the overlays were not rendered by kustomize "
              "(scripts/install-deps.sh installs Debian's kubernetes-client). "
              "yamllint and the structure checks passed on an approximate render.")
        return SKIP
    print(f"PASS: rendered with {kubectl}, linted, structure checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
