#!/usr/bin/python3
"""Renders deploy/'s kustomize overlays, lints them and checks their shape.

Usage: check_manifests.py SOURCE_DIR

Renders deploy/overlays/{cpu,gpu} with `kubectl kustomize`, runs yamllint on
deploy/ and on each rendered overlay, and checks what a cluster operator
relies on: one server replica on a PersistentVolumeClaim mounted at its data
dir, a Service for gRPC and metrics, TLS and bearer tokens from mounted
Secrets, gRPC health probes on the plaintext health port, workers on the
right device that trust the CA and carry an admin token, resources, a
PodDisruptionBudget, graceful termination and non-root pods. It then
breaks the render in a few ways and expects each to be caught.

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
DEPLOY_DOC = ""  # docs/deploy.md, read by main()

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


def secret_file(where, pod, container, path):
    """The (Secret name, key) a file path in the container comes from, or
    None after a failure: the path must lie in a read-only Secret mount
    whose items (if it lists any) hold it, and the Secret must have the key."""
    cname = f"{where} {container['name']}"
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        if not path.startswith(prefix):
            continue
        relative = path[len(prefix):]
        secret = volumes.get(mount["name"], {}).get("secret")
        if secret is None:
            fail(cname, f"{path} is not in a Secret mount")
            return None
        if mount.get("readOnly") is not True:
            fail(cname, f"the Secret mount at {mount['mountPath']} is not readOnly")
        items = secret.get("items")
        if items is None:
            key = relative
        else:
            keys = [i["key"] for i in items if i.get("path") == relative]
            if not keys:
                fail(cname, f"{path}: Secret volume {mount['name']} lists no item "
                     f"with path {relative!r}")
                return None
            key = keys[0]
        return secret["secretName"], key
    fail(cname, f"{path} is under no volume mount")
    return None


def secret_keys(docs, name):
    secret = find(docs, "Secret", name=name) or {}
    return set(secret.get("stringData", {})) | set(secret.get("data", {}))


def check_secret_flag(where, docs, pod, container, args, flag, secret, key):
    """--flag names a file mounted from Secret `secret`'s `key`."""
    path = flag_value(args, flag)
    if path is None:
        fail(f"{where} {container['name']}", f"no --{flag}")
        return
    source = secret_file(where, pod, container, path)
    if source is None:
        return
    if source != (secret, key):
        fail(f"{where} {container['name']}", f"--{flag}={path} comes from Secret "
             f"{source[0]} key {source[1]}, expected Secret {secret} key {key}")
    elif key not in secret_keys(docs, secret):
        fail(f"{where} {container['name']}", f"Secret {secret} has no key {key}")


def mounted_secret_keys(pod, container):
    """(Secret, key) pairs the container can read."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        secret = volumes.get(mount["name"], {}).get("secret")
        if secret is None:
            continue
        items = secret.get("items")
        if items is None:
            yield secret["secretName"], "*"
        else:
            for item in items:
                yield secret["secretName"], item["key"]


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

    # TLS and tokens on the gRPC port, from the mounted Secrets.
    check_secret_flag(where, docs, pod, container, args, "tls_cert_file",
                      "tlserve-tls", "tls.crt")
    check_secret_flag(where, docs, pod, container, args, "tls_key_file",
                      "tlserve-tls", "tls.key")
    check_secret_flag(where, docs, pod, container, args, "auth_tokens_file",
                      "tlserve-auth", "tokens")
    if ("tlserve-auth", "worker-token") in set(mounted_secret_keys(pod, container)):
        fail(where, "the server mounts the workers' token; it needs only the tokens file")

    # The kubelet's gRPC probes speak no TLS: they go to the plaintext
    # health-only port.
    health = flag_value(args, "health_listen")
    if health is None:
        fail(where, "server has no --health_listen: gRPC probes cannot reach a TLS port")
        return
    health_port = port_of(health)
    if health_port in (grpc_port, metrics_port):
        fail(where, f"--health_listen {health} shares a port with gRPC or metrics")
    if ports.get("health") != health_port:
        fail(where, f"container port 'health' {ports.get('health')} does not match "
             f"--health_listen {health}")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        grpc = container.get(probe, {}).get("grpc")
        if grpc is None:
            if probe != "startupProbe":
                fail(where, f"server {probe} is not a gRPC (grpc.health.v1) probe")
        elif grpc.get("port") != health_port:
            fail(where, f"server {probe} checks port {grpc.get('port')}, the plaintext "
                 f"health port is {health_port}")

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
    # TLS trusting the mounted CA, and the workers' (admin) token.
    pod = worker["spec"]["template"]["spec"]
    check_secret_flag(where, docs, pod, container, args, "tls_ca_file",
                      "tlserve-tls", "ca.crt")
    check_secret_flag(where, docs, pod, container, args, "token_file",
                      "tlserve-auth", "worker-token")
    mounted = set(mounted_secret_keys(pod, container))
    for secret, key in (("tlserve-tls", "tls.key"), ("tlserve-auth", "tokens")):
        if (secret, key) in mounted or (secret, "*") in mounted:
            fail(where, f"workers mount {secret} key {key}, which only the server needs")
    # The worker finds the server through $TLSERVE_SERVER or --server, by the
    # Service's DNS name: the name docs/deploy.md has operators put in the
    # certificate, which TLS checks.
    server_address = flag_value(args, "server") or env_values(where, container, docs).get("TLSERVE_SERVER")
    service = find(docs, "Service", name="tlserve")
    if server_address is None:
        fail(where, "worker has neither --server nor TLSERVE_SERVER")
    elif service is not None:
        host, port = server_address.rsplit(":", 1)
        namespace = service["metadata"].get("namespace", NAMESPACE)
        names = (f"tlserve.{namespace}.svc", f"tlserve.{namespace}.svc.cluster.local")
        service_ports = [p["port"] for p in service["spec"]["ports"]
                         if p.get("targetPort") == "grpc"]
        if host not in names or int(port) not in service_ports:
            fail(where, f"workers dial {server_address}, not the tlserve Service's gRPC "
                 f"port by its DNS name ({names[0]})")
        elif host not in DEPLOY_DOC:
            fail(where, f"docs/deploy.md does not tell operators to put {host} in the "
                 "server certificate")
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
    # The tokens placeholder has tlserve's format, with an admin for workers.
    tokens = (find(docs, "Secret", name="tlserve-auth") or {}).get("stringData", {}).get("tokens", "")
    lines = [l.split() for l in tokens.splitlines() if l.strip() and not l.startswith("#")]
    for fields in lines:
        if len(fields) != 3 or fields[1] not in ("user", "admin"):
            fail(where, f"tlserve-auth tokens line {' '.join(fields)!r} is not "
                 "'<tenant> <user|admin> <sha256>'")
    if not any(len(f) == 3 and f[1] == "admin" for f in lines):
        fail(where, "tlserve-auth tokens has no admin line for the workers' token")
    for doc in docs:
        if doc["kind"] != "Namespace" and doc["metadata"].get("namespace") != NAMESPACE:
            fail(where, f"{doc['kind']} {doc['metadata']['name']} is not in namespace "
                 f"{NAMESPACE}")


def check_all(where, docs, overlay):
    check_server(where, docs)
    check_worker(where, docs, overlay)
    check_every_pod(where, docs)
    check_config(where, docs)


def server_container(docs):
    pod = find(docs, "Deployment", name="tlserve")["spec"]["template"]["spec"]
    return [c for c in pod["containers"] if c["name"] == "server"][0]


def worker_container(docs):
    pod = find(docs, "Deployment", name="tlworker")["spec"]["template"]["spec"]
    return [c for c in pod["containers"] if c["name"] == "worker"][0]


def drop_arg(container, flag):
    container["args"] = [a for a in container["args"] if not a.startswith(f"--{flag}=")]


def set_probe_ports(docs, port):
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        server_container(docs)[probe]["grpc"]["port"] = port


def drop_mount(container, name):
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != name]


def set_server_address(docs, address):
    find(docs, "ConfigMap", prefix="tlserve-config")["data"]["TLSERVE_SERVER"] = address


def set_tokens(docs, text):
    find(docs, "Secret", name="tlserve-auth")["stringData"]["tokens"] = text


def mount_everything(docs, volume):
    pod = find(docs, "Deployment", name="tlworker")["spec"]["template"]["spec"]
    [v for v in pod["volumes"] if v["name"] == volume][0]["secret"].pop("items")


# Ways to break the TLS, token and probe wiring; each must be caught.
BREAKAGES = {
    "server without --tls_cert_file": lambda d: drop_arg(server_container(d), "tls_cert_file"),
    "server without --auth_tokens_file": lambda d: drop_arg(server_container(d), "auth_tokens_file"),
    "server without --health_listen": lambda d: drop_arg(server_container(d), "health_listen"),
    "probes on the TLS port": lambda d: set_probe_ports(d, 50051),
    "auth Secret not mounted in the server": lambda d: drop_mount(server_container(d), "auth"),
    "worker without --tls_ca_file": lambda d: drop_arg(worker_container(d), "tls_ca_file"),
    "worker without --token_file": lambda d: drop_arg(worker_container(d), "token_file"),
    "worker token not mounted": lambda d: drop_mount(worker_container(d), "auth"),
    "workers dial the short name, not the Service DNS name": lambda d: set_server_address(d, "tlserve:50051"),
    "workers get the server's key": lambda d: mount_everything(d, "tls"),
    "tokens in the old 'token tenant' format":
        lambda d: set_tokens(d, "REPLACE-ME-not-a-real-token default\n"),
    "tokens without an admin": lambda d: set_tokens(d, "team-a user REPLACE-ME-sha\n"),
}


def check_catches_breakage(where, docs, overlay):
    """The checks above must fail each broken copy of a passing render."""
    for name, breakage in BREAKAGES.items():
        broken = copy.deepcopy(docs)
        breakage(broken)
        before = len(failures)
        check_all(where, broken, overlay)
        caught = len(failures) > before
        del failures[before:]
        if not caught:
            fail(where, f"the checks pass a broken render: {name}")


def yamllint(deploy_dir, label, text=None):
    command = ["yamllint", "--strict", "-c", os.path.join(deploy_dir, ".yamllint")]
    result = subprocess.run(command + (["-"] if text is not None else [deploy_dir]),
                            input=text, capture_output=True, text=True)
    if result.returncode != 0:
        fail(label, f"yamllint:\n{result.stdout}{result.stderr}")


def main():
    global DEPLOY_DOC
    source_dir = sys.argv[1]
    deploy_dir = os.path.join(source_dir, "deploy")
    with open(os.path.join(source_dir, "docs", "deploy.md")) as f:
        DEPLOY_DOC = f.read()
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
        before = len(failures)
        check_all(where, docs, overlay)
        if len(failures) == before:
            check_catches_breakage(where, docs, overlay)
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
