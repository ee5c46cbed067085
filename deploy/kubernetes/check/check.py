"""The offline check of the Kubernetes deployment, run by scripts/check-kubernetes
(which installs what it imports): renders the Helm chart deploy/kubernetes/baton with
Helm's own Go SDK (helm-python-sdk, no cluster, no network), once with the default
values and once with every optional part on (the chart's ci/all-on-values.yaml), and
checks what it rendered:

- every manifest against the Kubernetes JSON schemas of the oldest and the newest
  version the chart supports (kubernetes-validate's bundled schemas, strict: an
  unknown field is an error). A kind with no bundled schema is an error, except the
  ServiceMonitor, which is written out for servicemonitor.mjs to check against the
  Prometheus Operator's own schema;
- what the schemas cannot see: the objects point at each other (selectors match the
  pod labels, the HPA and Ingress name what exists), and the pod is what baton's
  drain needs (probes, preStop, the grace period's formula, a non-root read-only
  container whose UID is the image's);
- with --baton BINARY, that every BATON_* variable the chart sets is one `baton
  --help` lists.

Each render is written to OUT/<render>/<kind>-<name>.yaml and, as JSON, to
OUT/<render>.json, where the deploy test's simulated rolling update reads the pod's
timings; the objects servicemonitor.mjs checks go to OUT/<render>.others.json. Exit status 1 with a line per
fault."""

import argparse
import json
import os
import re
import subprocess
import sys

import helm_python as helm
import kubernetes_validate
import yaml

# The chart's kubeVersion floor and the newest bundled schemas: an object valid for
# both uses no field one of them lacks.
KUBE_VERSIONS = ["1.25.0", "1.37.0"]
# Kinds another checker validates (their schemas are not Kubernetes' own).
OTHER_CHECKER = {"ServiceMonitor": "servicemonitor.mjs"}

faults = []


def fault(render, message):
    faults.append(f"{render}: {message}")


def render(chart_dir, values, release, namespace):
    with helm.Chart.load(chart_dir) as chart:
        files = chart.render(values, name=release, namespace=namespace, is_install=True)
    objects = []
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append((path, doc))
    return objects


def validate_schemas(name, objects):
    for path, obj in objects:
        kind = obj.get("kind")
        if kind in OTHER_CHECKER:
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                where = ".".join(str(p) for p in e.path)
                fault(name, f"{path}: {kind} does not validate against Kubernetes {version}: {where}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError:
                fault(name, f"{path}: no schema for {obj.get('apiVersion')} {kind} in Kubernetes {version}")


def by_kind(objects):
    found = {}
    for _, obj in objects:
        found.setdefault(obj["kind"], []).append(obj)
    return found


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def seconds(duration):
    """'30s' -> 30 (the chart writes baton's durations in whole seconds)."""
    m = re.fullmatch(r"(\d+)s", duration or "")
    return int(m.group(1)) if m else None


def check_objects(name, objects, values, image_uid):
    kinds = by_kind(objects)
    deployments = kinds.get("Deployment", [])
    if len(deployments) != 1:
        fault(name, f"{len(deployments)} Deployments rendered, expected 1")
        return
    dep = deployments[0]
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    if not matches(spec["selector"]["matchLabels"], pod_labels):
        fault(name, "the Deployment's selector does not match its pod labels")
    containers = {c["name"]: c for c in pod["containers"]}
    baton = containers.get("baton")
    if baton is None:
        fault(name, "no container named baton")
        return
    env = {e["name"]: e for e in baton.get("env", [])}
    value = lambda var: env.get(var, {}).get("value")  # noqa: E731

    # Rollout: one new pod first, none fewer.
    rolling = spec["strategy"]["rollingUpdate"]
    if (rolling.get("maxSurge"), rolling.get("maxUnavailable")) != (1, 0):
        fault(name, f"rollingUpdate is {rolling}, expected maxSurge 1 / maxUnavailable 0")
    if not spec.get("minReadySeconds"):
        fault(name, "no minReadySeconds")

    # Probes: ready on /readyz, alive on /healthz (it answers 200 through a drain).
    port_names = {p["name"]: p["containerPort"] for p in baton["ports"]}
    for probe, path in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", "/healthz")]:
        got = baton.get(probe, {}).get("httpGet", {})
        if got.get("path") != path:
            fault(name, f"{probe} is on {got.get('path')}, expected {path}")
        if got.get("port") not in port_names:
            fault(name, f"{probe}'s port {got.get('port')} is not a container port")

    listen = value("BATON_LISTEN") or ""
    port = port_names.get("http")
    if listen != f"0.0.0.0:{port}":
        fault(name, f"BATON_LISTEN is {listen!r}, expected 0.0.0.0:{port} (the http port, every interface)")

    # preStop: wait for the load balancer, then the drain, to its end.
    command = baton.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    script = command[-1] if command else ""
    m = re.fullmatch(r"sleep (\d+) && exec /usr/local/bin/baton drain --url http://127\.0\.0\.1:(\d+) --wait --json", script)
    if not m:
        fault(name, f"preStop is {command!r}: expected a sleep, then baton drain --wait on the pod's port")
        return
    lb_sleep, drain_port = int(m.group(1)), int(m.group(2))
    if drain_port != port:
        fault(name, f"preStop drains port {drain_port}, baton listens on {port}")
    if "BATON_ADMIN_TOKEN" not in env:
        fault(name, "BATON_ADMIN_TOKEN is not set: the preStop's baton drain would be refused")

    # The grace period's formula, and that it covers what it must.
    window, lb_delay = seconds(value("BATON_DRAIN_WINDOW")), seconds(value("BATON_DRAIN_LB_DELAY"))
    if window is None or lb_delay is None:
        fault(name, "BATON_DRAIN_WINDOW or BATON_DRAIN_LB_DELAY is not a whole number of seconds")
        return
    if 2 * lb_delay > window:
        fault(name, f"BATON_DRAIN_LB_DELAY {lb_delay}s is over half the window {window}s (baton cuts it)")
    grace = pod.get("terminationGracePeriodSeconds")
    expected = lb_sleep + window + values["terminationMarginSeconds"]
    if grace != expected:
        fault(name, f"terminationGracePeriodSeconds is {grace}, expected preStop sleep {lb_sleep} + window {window} + margin {values['terminationMarginSeconds']} = {expected}")

    # Secrets come from the existing Secret, never inline.
    for var in ["DATABASE_URL", "REDIS_URL", "BATON_ADMIN_TOKEN", "BATON_SECRET"]:
        if var in env and "secretKeyRef" not in env[var].get("valueFrom", {}):
            fault(name, f"{var} is not read from a Secret")
    for var in ["DATABASE_URL", "REDIS_URL"]:
        if var not in env:
            fault(name, f"{var} is not set")

    # Non-root, read-only, the image's UID, a writable /tmp.
    psc, csc = pod.get("securityContext", {}), baton.get("securityContext", {})
    if not psc.get("runAsNonRoot") or psc.get("runAsUser") != image_uid:
        fault(name, f"the pod does not run as non-root UID {image_uid} (the image's USER): {psc}")
    if not csc.get("readOnlyRootFilesystem") or csc.get("allowPrivilegeEscalation") is not False:
        fault(name, f"the container's root filesystem is not read-only, or it may escalate: {csc}")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    tmp = [m for m in baton.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
    if not tmp or "emptyDir" not in volumes.get(tmp[0]["name"], {}):
        fault(name, "no emptyDir on /tmp")

    # The objects that point at the pods or the Deployment.
    services = kinds.get("Service", [])
    for svc in services:
        if not matches(svc["spec"]["selector"], pod_labels):
            fault(name, f"Service {svc['metadata']['name']}'s selector does not match the pods")
        for p in svc["spec"]["ports"]:
            if p["targetPort"] not in port_names and p["targetPort"] not in port_names.values():
                fault(name, f"Service port {p['name']} targets {p['targetPort']}, not a container port")
    for pdb in kinds.get("PodDisruptionBudget", []):
        if not matches(pdb["spec"]["selector"]["matchLabels"], pod_labels):
            fault(name, "the PodDisruptionBudget's selector does not match the pods")
    for hpa in kinds.get("HorizontalPodAutoscaler", []):
        ref = hpa["spec"]["scaleTargetRef"]
        if (ref["kind"], ref["name"]) != ("Deployment", dep["metadata"]["name"]):
            fault(name, f"the HPA scales {ref}, not the Deployment")
        if "replicas" in spec:
            fault(name, "the Deployment sets replicas while the HPA owns the count")
    service_ports = {(s["metadata"]["name"], p["name"]) for s in services for p in s["spec"]["ports"]}
    for ing in kinds.get("Ingress", []):
        for rule in ing["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                backend = p["backend"]["service"]
                if (backend["name"], backend["port"].get("name")) not in service_ports:
                    fault(name, f"Ingress path {p['path']} goes to {backend}, which no Service has")
                # The operator's endpoints stay inside the cluster.
                for private in ["/admin/drain", "/metrics", "/readyz"]:
                    if p["pathType"] == "Prefix":
                        routed = private == p["path"] or private.startswith(p["path"].rstrip("/") + "/")
                    else:
                        routed = private == p["path"]
                    if routed:
                        fault(name, f"the Ingress routes {private} (path {p['path']}, {p['pathType']})")
    for sm in kinds.get("ServiceMonitor", []):
        ok = [s for s in services if matches(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        if not ok:
            fault(name, "the ServiceMonitor selects no Service")
        for ep in sm["spec"]["endpoints"]:
            if not any((s["metadata"]["name"], ep["port"]) in service_ports for s in ok):
                fault(name, f"the ServiceMonitor scrapes port {ep['port']}, which its Service lacks")
            if ep.get("path") != "/metrics":
                fault(name, f"the ServiceMonitor scrapes {ep.get('path')}, not /metrics")
    return env


def baton_env_names(binary):
    """The environment variables `baton --help` (and its subcommands') lists."""
    names = set()
    for args in [["--help"], ["drain", "--help"]]:
        out = subprocess.run([binary, *args], check=True, capture_output=True, text=True).stdout
        names |= set(re.findall(r"\[env: ([A-Z_]+)[=\]]", out))
    return names


def image_uid(containerfile):
    """The numeric UID of the Containerfile's last USER."""
    users = re.findall(r"^USER\s+(\S+)", open(containerfile).read(), re.M)
    if not users or not re.fullmatch(r"\d+(:\d+)?", users[-1]):
        raise SystemExit(f"{containerfile}: the last USER is not numeric: {users}")
    return int(users[-1].split(":")[0])


def write(out, name, objects):
    directory = os.path.join(out, name)
    os.makedirs(directory, exist_ok=True)
    for f in os.listdir(directory):
        os.remove(os.path.join(directory, f))
    for _, obj in objects:
        path = os.path.join(directory, f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(obj, f, sort_keys=False)
    # As JSON too (Node.js reads no YAML): every object, for the deploy test's
    # simulated rolling update, and those another checker validates.
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump([obj for _, obj in objects], f)
    others = [obj for _, obj in objects if obj["kind"] in OTHER_CHECKER]
    with open(os.path.join(out, f"{name}.others.json"), "w") as f:
        json.dump(others, f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chart", required=True)
    ap.add_argument("--containerfile", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--baton", help="a baton binary: check the chart's variables against its --help")
    args = ap.parse_args()

    uid = image_uid(args.containerfile)
    known = baton_env_names(args.baton) if args.baton else None
    defaults = yaml.safe_load(open(os.path.join(args.chart, "values.yaml")))
    all_on = yaml.safe_load(open(os.path.join(args.chart, "ci", "all-on-values.yaml")))
    for name, values in [("defaults", {}), ("all-on", all_on)]:
        objects = render(args.chart, values, "baton", "chat")
        merged = {**defaults, **values}
        write(args.out, name, objects)
        validate_schemas(name, objects)
        env = check_objects(name, objects, merged, uid) or {}
        if known is not None:
            for var in env:
                if var.startswith("BATON_") and var not in known:
                    fault(name, f"the chart sets {var}, which `baton --help` does not list")
        kinds = sorted(f"{o['kind']}" for _, o in objects)
        print(f"{name}: rendered {len(objects)} objects ({', '.join(kinds)}); "
              f"schemas of Kubernetes {' and '.join(KUBE_VERSIONS)} checked for all but "
              f"{', '.join(sorted(k for k in set(kinds) if k in OTHER_CHECKER)) or 'none'}")
    if faults:
        for f in faults:
            print(f"check.py: {f}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
