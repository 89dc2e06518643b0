"""The k8s/ manifests and docker/ images: every overlay renders, every object validates offline
against the Kubernetes schemas (and the RayCronJob against k8s/rayjob.schema.json), and the
security properties hold (what is privileged, which verbs each role gets, resources, non-root,
references that resolve, pinned images)."""
from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from urllib.parse import urlparse

import jsonschema
import kubernetes_validate
import pytest
import yaml

sys.path.insert(0, os.path.dirname(__file__))
from k8s_render import object_key, render, split_image  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K8S = os.path.join(ROOT, "k8s")
TARGETS = ["base", "overlays/dev", "overlays/aws"]
K8S_VERSION = "1.31.0"          # oldest Kubernetes we document support for
WORKLOAD_KINDS = {"Deployment", "DaemonSet", "Job", "StatefulSet", "ReplicaSet"}  # spec.template


@pytest.fixture(scope="module", params=TARGETS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(os.path.join(K8S, request.param))


@pytest.fixture(scope="module")
def base() -> list[dict]:
    return render(os.path.join(K8S, "base"))


@pytest.fixture(scope="module")
def dev() -> list[dict]:
    return render(os.path.join(K8S, "overlays/dev"))


@pytest.fixture(scope="module")
def aws() -> list[dict]:
    return render(os.path.join(K8S, "overlays/aws"))


def one(objs: list[dict], kind: str, name: str) -> dict:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def pod_templates(obj: dict) -> list[tuple[str, dict]]:
    """(label, PodTemplateSpec) of every pod a workload object creates, Ray pods included."""
    spec = obj.get("spec", {})
    if obj["kind"] in ("RayCronJob", "RayJob"):
        job = spec["jobTemplate"] if obj["kind"] == "RayCronJob" else spec
        rc = job["rayClusterSpec"]
        out = [("head", rc["headGroupSpec"]["template"])]
        out += [(f"worker:{g['groupName']}", g["template"]) for g in rc.get("workerGroupSpecs", [])]
        if "submitterPodTemplate" in job:
            out.append(("submitter", job["submitterPodTemplate"]))
        return out
    if obj["kind"] == "CronJob":
        return [("pod", spec["jobTemplate"]["spec"]["template"])]
    if obj["kind"] == "Pod":
        return [("pod", obj)]
    if obj["kind"] in WORKLOAD_KINDS:
        return [("pod", spec["template"])]
    return []


def all_pods(objs: list[dict]):
    for o in objs:
        for label, tmpl in pod_templates(o):
            yield f"{o['kind']}/{o['metadata']['name']}/{label}", o, tmpl["spec"]


def containers(pod: dict) -> list[dict]:
    return pod.get("initContainers", []) + pod["containers"]


def flag(container: dict, name: str) -> str:
    args = container["args"]
    assert args.count(name) == 1, f"{container['name']}: {name} given {args.count(name)} times"
    return args[args.index(name) + 1]


def env_of(container: dict, objs: list[dict]) -> dict[str, str]:
    """The env a container gets from literal values and ConfigMaps (Secrets left out)."""
    env: dict[str, str] = {}
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            env.update(one(objs, "ConfigMap", src["configMapRef"]["name"]).get("data", {}))
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "configMapKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["configMapKeyRef"]
            env[e["name"]] = one(objs, "ConfigMap", ref["name"])["data"][ref["key"]]
    return env


# --------------------------------------------------------------------------- rendering

@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed; renderer unchecked here")
@pytest.mark.parametrize("target", TARGETS)
def test_renderer_matches_kubectl_kustomize(target):
    out = subprocess.run(["kubectl", "kustomize", os.path.join(K8S, target)],
                         capture_output=True, text=True, check=True).stdout
    real = {object_key(o): o for o in yaml.safe_load_all(out) if o}
    mine = {object_key(o): o for o in render(os.path.join(K8S, target))}
    assert sorted(mine) == sorted(real)
    for k in real:
        assert mine[k] == real[k], k


def test_rendered_names_are_unique(rendered):
    _, objs = rendered
    keys = [object_key(o) for o in objs]
    assert len(keys) == len(set(keys))


# --------------------------------------------------------------------------- schemas

def validate_core(obj: dict) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.fixture(scope="module")
def ray_schema() -> dict:
    with open(os.path.join(K8S, "rayjob.schema.json")) as f:
        schema = json.load(f)
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def test_every_object_validates_offline(rendered, ray_schema):
    _, objs = rendered
    ray_objs = [o for o in objs if o["apiVersion"].startswith("ray.io/")]
    assert [o["kind"] for o in ray_objs] == ["RayCronJob"]
    for o in objs:
        if o in ray_objs:
            jsonschema.validate(o, ray_schema, cls=jsonschema.Draft202012Validator)
            # The Ray pod templates are core PodTemplateSpecs: validate them as such.
            for label, tmpl in pod_templates(o):
                validate_core({"apiVersion": "v1", "kind": "PodTemplate",
                               "metadata": {"name": f"netmon-cost-{label.replace(':', '-')}"},
                               "template": tmpl})
        else:
            validate_core(o)


def test_validation_rejects_mistakes(base, ray_schema):
    """Both validators bite: an unknown field, a wrong type, a bad cron string, a typo."""
    ds = copy.deepcopy(one(base, "DaemonSet", "netmon-agent"))
    ds["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_core(ds)
    ds = copy.deepcopy(one(base, "DaemonSet", "netmon-agent"))
    ds["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] = ["100m"]
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_core(ds)
    cron = one(base, "RayCronJob", "netmon-cost")
    for mutate in (
        lambda c: c["spec"].__setitem__("schedule", "hourly"),
        lambda c: c["spec"]["jobTemplate"].__setitem__("shutdownAfterJobFinish", True),
        lambda c: c["spec"]["jobTemplate"].__setitem__("shutdownAfterJobFinishes", False),
        lambda c: c["spec"]["jobTemplate"]["rayClusterSpec"]["workerGroupSpecs"][0].pop("maxReplicas"),
        lambda c: c["spec"]["jobTemplate"].__setitem__("submissionMode", "K8sJob"),
    ):
        bad = copy.deepcopy(cron)
        mutate(bad)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, ray_schema, cls=jsonschema.Draft202012Validator)


# --------------------------------------------------------------------------- security

def test_only_the_agent_is_privileged_or_touches_the_host(rendered):
    _, objs = rendered
    seen = set()
    for where, obj, pod in all_pods(objs):
        is_agent = obj["kind"] == "DaemonSet" and obj["metadata"]["name"] == "netmon-agent"
        for c in containers(pod):
            sc = c.get("securityContext", {})
            if sc.get("privileged") or sc.get("capabilities", {}).get("add"):
                seen.add(f"{where}/{c['name']}")
                assert is_agent, f"{where}/{c['name']} is privileged or adds capabilities"
            if not is_agent:
                assert sc.get("allowPrivilegeEscalation") is False, f"{where}/{c['name']}"
                assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}/{c['name']}"
        for field in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(field) or is_agent, f"{where} sets {field}"
        assert is_agent or not any("hostPath" in v for v in pod.get("volumes", [])), where
    # Within the agent pod: the agent and its BPF-compiling init container, nothing else.
    assert seen == {"DaemonSet/netmon-agent/pod/agent", "DaemonSet/netmon-agent/pod/bpf-pin"}


def test_agent_daemonset_exactly_as_the_spec(rendered):
    _, objs = rendered
    ds = one(objs, "DaemonSet", "netmon-agent")
    pod = ds["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert c["securityContext"]["privileged"] is True
    assert sorted(c["securityContext"]["capabilities"]["add"]) == ["NET_ADMIN", "SYS_RESOURCE"]
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert c["resources"]["limits"] == {"cpu": "100m", "memory": "128Mi"}      # the spec's limits
    assert c["resources"]["requests"]["cpu"] == "50m"
    # The memory request is the measured in-cluster peak (docs/agent.md), rounded up to 8 MiB.
    measured = measured_cluster_peak_mib()
    request = int(c["resources"]["requests"]["memory"].removesuffix("Mi"))
    assert measured <= request < measured + 8 and request <= 128, (measured, request)
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate",
                                            "rollingUpdate": {"maxUnavailable": "10%"}}
    pc = one(objs, "PriorityClass", pod["priorityClassName"])
    assert pod["priorityClassName"] != "system-node-critical"
    assert 100_000_000 <= pc["value"] <= 1_000_000_000 and not pc.get("globalDefault")
    ann = ds["spec"]["template"]["metadata"]["annotations"]
    assert ann == {"prometheus.io/scrape": "true", "prometheus.io/port": "9808", "prometheus.io/path": "/metrics"}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": 9808}, probe
    assert c["args"][0] == "run"
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in c["env"]
    assert {"name": "NETMON_BPF_PIN_DIR", "value": "/sys/fs/bpf/netmon"} in c["env"]
    assert c["envFrom"] == [{"configMapRef": {"name": "netmon-storage"}},
                            {"configMapRef": {"name": "netmon-agent-config"}},
                            {"secretRef": {"name": "netmon-s3-credentials", "optional": True}}]

    # Host mounts: the host's bpffs (where bpf-pin pinned the programs), no kernel headers:
    # the agent compiles nothing, and without headers a missing pin fails at once instead of
    # compiling into the 128 MiB limit.
    assert host_mounts(pod, c) == {
        ("/sys/fs/cgroup", "/host/sys/fs/cgroup", True, "Directory"),
        ("/sys/fs/bpf", "/sys/fs/bpf", False, "DirectoryOrCreate"),
        ("/var/lib/netmon/spool", "/var/lib/netmon/spool", False, "DirectoryOrCreate"),
    }
    # The agent is told where the host's cgroup v2 root and its spool are mounted.
    assert flag(c, "--cgroup-path") == "/host/sys/fs/cgroup"
    assert flag(c, "--spool") == "/var/lib/netmon/spool"


def measured_cluster_peak_mib() -> float:
    """The agent's measured peak RSS in a cluster, from docs/agent.md's memory table."""
    import re

    text = open(os.path.join(ROOT, "docs", "agent.md")).read()
    m = re.search(r"^\| `run` in a cluster[^|]*\| ([0-9.]+) MiB \|", text, re.M)
    assert m, "docs/agent.md lists the in-cluster peak RSS"
    return float(m.group(1))


def host_mounts(pod: dict, c: dict) -> set[tuple[str, str, bool, str]]:
    """(host path, mount path, read-only, hostPath type; "" = unchecked) of a container's mounts."""
    volumes = {v["name"]: v["hostPath"] for v in pod["volumes"]}
    return {(volumes[m["name"]]["path"], m["mountPath"], m.get("readOnly", False), volumes[m["name"]].get("type", ""))
            for m in c["volumeMounts"]}


def env_value(c: dict, name: str) -> str:
    [value] = [e["value"] for e in c.get("env", []) if e["name"] == name]
    return value


def test_bpf_pin_init_container(rendered):
    """The init container compiles with the agent's image, its own budget and the kernel
    headers, and pins where the agent looks for the programs."""
    _, objs = rendered
    pod = one(objs, "DaemonSet", "netmon-agent")["spec"]["template"]["spec"]
    [init] = pod["initContainers"]
    [agent] = pod["containers"]
    assert init["name"] == "bpf-pin"
    assert init["image"] == agent["image"]          # also after an overlay's `images:` rewrite
    assert init["command"] == ["/bin/sh", "-c"] and len(init["args"]) == 1
    assert "python -m node_agent.bpfload pin " in init["args"][0]
    assert init["securityContext"] == {"privileged": True}
    assert init["resources"] == {"requests": {"cpu": "100m", "memory": "256Mi"},
                                 "limits": {"cpu": "1", "memory": "512Mi"}}
    assert host_mounts(pod, init) == {
        ("/sys/fs/bpf", "/sys/fs/bpf", False, "DirectoryOrCreate"),
        ("/lib/modules", "/lib/modules", True, ""),     # optional: node images without headers start too
        ("/usr/src", "/usr/src", True, ""),
    }
    # Pinned on the host's bpffs, under the same path in both containers.
    pin_dir = env_value(init, "NETMON_BPF_PIN_DIR")
    assert pin_dir == env_value(agent, "NETMON_BPF_PIN_DIR") == "/sys/fs/bpf/netmon"
    for c in (init, agent):
        [bpffs] = [m for m in c["volumeMounts"] if m["name"] == "bpffs"]
        assert pin_dir.startswith(bpffs["mountPath"].rstrip("/") + "/") and not bpffs.get("readOnly")
    # One switch for both: the init container's failure policy follows the agent's collector.
    assert {"configMapRef": {"name": "netmon-agent-config"}} in init["envFrom"]
    assert {"configMapRef": {"name": "netmon-agent-config"}} in agent["envFrom"]
    assert not any("secretRef" in s for s in init["envFrom"])   # it needs no credentials
    assert env_of(init, objs)["NETMON_COLLECTOR"] == env_of(agent, objs)["NETMON_COLLECTOR"] == "auto"


def test_inventory_deployment(rendered):
    _, objs = rendered
    dep = one(objs, "Deployment", "netmon-inventory")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert c["args"][0] == "inventory"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["serviceAccountName"] == "netmon-inventory"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": 9809}, probe
    # Same storage configuration as the agent (without the agent's own settings).
    agent = one(objs, "DaemonSet", "netmon-agent")["spec"]["template"]["spec"]["containers"][0]
    assert c["envFrom"] == [s for s in agent["envFrom"] if s.get("configMapRef", {}).get("name") != "netmon-agent-config"]
    # With a read-only root, everything the process writes is a mounted volume.
    assert {m["mountPath"] for m in c["volumeMounts"]} == {flag(c, "--spool"), "/tmp"}


@pytest.mark.parametrize("kind,name", [("DaemonSet", "netmon-agent"), ("Deployment", "netmon-inventory")])
def test_command_lines_parse_with_the_real_cli(dev, monkeypatch, kind, name):
    """The args and env the manifests give are what `netmon-agent` accepts and means."""
    from node_agent.cli import build_parser

    [c] = one(dev, kind, name)["spec"]["template"]["spec"]["containers"]
    env = env_of(c, dev)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    if any(e["name"] == "NODE_NAME" for e in c.get("env", [])):
        monkeypatch.setenv("NODE_NAME", "node-a")   # the downward API's value at run time
    args = build_parser().parse_args(c["args"])
    assert args.command == c["args"][0]
    assert args.lake == "s3://netmon/lake" and args.s3_endpoint == "http://minio.netmon.svc:9000"
    assert args.spool in {m["mountPath"] for m in c["volumeMounts"]}
    assert int(args.listen.rsplit(":", 1)[1]) == c["livenessProbe"]["httpGet"]["port"] == c["ports"][0]["containerPort"]
    if kind == "DaemonSet":
        assert args.node == "node-a" and args.cgroup_path == "/host/sys/fs/cgroup"
        assert args.collector == "auto" and args.dns is None   # DNS tracing: auto (a warning if it cannot start)


# ------------------------------------------- the bpf-pin init container, run for real (root)
# The rendered init container's command runs on this machine in a private mount namespace
# (its own bpffs, or /lib/modules hidden as on a node without kernel headers), so nothing is
# pinned on or hidden from the host. PATH leads to this venv's python, as /opt/venv in the image.

def run_in_mount_ns(setup: str, argv: list[str], env: dict[str, str], timeout: float = 300,
                    netns: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["unshare", "-m", *(["-n"] if netns else []), "--propagation", "private",
         "sh", "-c", f'{setup} && exec "$@"', "sh", *argv],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env={**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
             "PYTHONPATH": ROOT, **env})


def init_argv(objs: list[dict]) -> list[str]:
    [init] = one(objs, "DaemonSet", "netmon-agent")["spec"]["template"]["spec"]["initContainers"]
    return init["command"] + init["args"]


HIDE_HEADERS = "mount -t tmpfs tmpfs /lib/modules"   # the node has no kernel headers


@pytest.mark.privileged
@pytest.mark.parametrize("collector,dns,fatal", [
    (None, None, False),              # unset: auto, DNS auto
    ("auto", None, False),            # the manifest's default
    ("conntrack", "false", False),
    ("conntrack", "True", True),      # DNS tracing forced on cannot work without the programs
    ("ebpf", None, True),
])
def test_bpf_pin_failure_is_fatal_only_when_the_agent_needs_the_programs(base, tmp_path, collector, dns, fatal):
    """A node that cannot compile: the init container lets the default conntrack agent start
    (exit 0) and fails the pod only for --collector ebpf or forced DNS tracing. Either way it
    removes the pin directory, so the agent never opens stale (older image) or partial pins."""
    pin = tmp_path / "netmon"
    pin.mkdir()
    (pin / "netmon_flows").write_text("left by an older image")
    # Unset = empty (the ConfigMap may leave them out); the script reads both as the default.
    env = {"NETMON_BPF_PIN_DIR": str(pin), "NETMON_COLLECTOR": collector or "", "NETMON_DNS": dns or ""}
    r = run_in_mount_ns(HIDE_HEADERS, init_argv(base), env)
    assert (r.returncode != 0) == fatal, r.stderr
    assert "error: kernel headers missing: /lib/modules/" in r.stderr   # bpfload's reason, first
    assert ("error: BPF programs not pinned" if fatal else "warning: BPF programs not pinned") in r.stderr
    assert not pin.exists()


@pytest.mark.privileged
@pytest.mark.parametrize("argv,message", [
    (["--collector", "ebpf"], "error: ebpf collector: kernel headers missing"),
    (["--collector", "conntrack", "--dns"], "error: cannot start DNS tracing: kernel headers missing"),
])
def test_agent_without_pins_stops_at_once_instead_of_compiling(base, tmp_path, argv, message):
    """The agent container mounts no kernel headers: with no pins it does not start a compile
    (~150-200 MiB, over its 128 MiB limit) but stops with one line. Own network namespace, so
    the conntrack collector reads an empty table, not the host's."""
    [agent] = one(base, "DaemonSet", "netmon-agent")["spec"]["template"]["spec"]["containers"]
    assert not {"/lib/modules", "/usr/src"} & {m["mountPath"] for m in agent["volumeMounts"]}
    r = run_in_mount_ns(HIDE_HEADERS, [os.path.join(os.path.dirname(sys.executable), "netmon-agent"), "run",
                                       "--standalone", "--node", "node-a", "--lake", str(tmp_path / "lake"),
                                       "--spool", str(tmp_path / "spool"), "--listen", "off", *argv],
                        {"NETMON_BPF_PIN_DIR": env_value(agent, "NETMON_BPF_PIN_DIR")}, timeout=120, netns=True)
    assert r.returncode == 2, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message), r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.privileged
@pytest.mark.slow
def test_bpf_pin_pins_every_program_and_map_the_agent_opens(base, tmp_path):
    """On a node that can compile: exit 0 and every object of bpfload.SOURCES pinned, on a
    bpffs, replacing an earlier pod's pins."""
    from node_agent import bpfload

    bpffs = tmp_path / "bpf"
    bpffs.mkdir()
    pin = bpffs / "netmon"
    # Run twice (the setup runs it once and lists the pins, then it runs again): a restarted
    # pod's init container replaces the earlier pins.
    argv = init_argv(base)
    r = run_in_mount_ns(f'mount -t bpf bpf "{bpffs}" && "$@" && ls "{pin}"', argv,
                        {"NETMON_BPF_PIN_DIR": str(pin), "NETMON_COLLECTOR": "ebpf"})
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr and "error" not in r.stderr
    expected = sorted(n for progs, maps in bpfload.SOURCES.values() for n in progs + maps)
    listed = sorted(ln for ln in r.stdout.split() if ln.startswith("netmon_"))   # from `ls`
    assert listed == expected
    pinned = [ln.split()[-1] for ln in r.stdout.splitlines() if ln.startswith("pinned ")]
    assert sorted(pinned) == sorted(str(pin / n) for n in expected * 2)


RBAC = {
    "netmon-agent": {("", "pods"): ["get", "list", "watch"], ("", "nodes"): ["get"]},
    "netmon-inventory": {("", "pods"): ["list", "watch"], ("", "services"): ["list", "watch"],
                         ("", "nodes"): ["list", "watch"],
                         ("discovery.k8s.io", "endpointslices"): ["list", "watch"]},
}


def test_rbac_verbs_per_role_exactly(rendered):
    _, objs = rendered
    roles = {}
    for o in objs:
        if o["kind"] in ("Role", "ClusterRole"):
            granted: dict[tuple[str, str], list[str]] = {}
            for rule in o["rules"]:
                assert set(rule) <= {"apiGroups", "resources", "verbs"}, rule  # no resourceNames games, no nonResourceURLs
                for group in rule["apiGroups"]:
                    for res in rule["resources"]:
                        assert "*" not in (group, res) and "*" not in rule["verbs"], o["metadata"]["name"]
                        granted.setdefault((group, res), []).extend(rule["verbs"])
            roles[o["metadata"]["name"]] = {k: sorted(v) for k, v in granted.items()}
    assert roles == RBAC

    bindings = {}
    for o in objs:
        if o["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            assert o["kind"] == "ClusterRoleBinding" and o["roleRef"]["kind"] == "ClusterRole"
            [subject] = o["subjects"]
            assert subject["kind"] == "ServiceAccount" and subject["namespace"] == "netmon"
            bindings[subject["name"]] = o["roleRef"]["name"]
    assert bindings == {"netmon-agent": "netmon-agent", "netmon-inventory": "netmon-inventory"}

    # Every pod runs as a ServiceAccount of ours; only the two bound ones get an API token.
    sas = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ServiceAccount"}
    assert one(objs, "ServiceAccount", "netmon-job").get("automountServiceAccountToken") is False
    for where, _, pod in all_pods(objs):
        sa = pod.get("serviceAccountName")
        assert sa in sas, f"{where} runs as {sa!r}"
        automount = pod.get("automountServiceAccountToken", sas[sa].get("automountServiceAccountToken", True))
        assert automount == (sa in bindings), where


def test_every_container_has_requests_and_limits(rendered):
    _, objs = rendered
    n = 0
    for where, _, pod in all_pods(objs):
        for c in containers(pod):
            for kind in ("requests", "limits"):
                assert set(c.get("resources", {}).get(kind, {})) >= {"cpu", "memory"}, f"{where}/{c['name']} {kind}"
            n += 1
    assert n >= 5


def test_job_inventory_and_minio_run_as_non_root(rendered):
    _, objs = rendered
    for where, obj, pod in all_pods(objs):
        if obj["kind"] == "DaemonSet":
            continue
        psc = pod.get("securityContext", {})
        for c in containers(pod):
            sc = {**psc, **c.get("securityContext", {})}
            assert sc.get("runAsNonRoot") is True and sc.get("runAsUser", 0) > 0, f"{where}/{c['name']}"
            if obj["kind"] == "RayCronJob":
                assert sc["runAsUser"] == 1000, where  # the Ray image's user


def test_cost_job_schedule_and_entrypoint(rendered):
    _, objs = rendered
    cron = one(objs, "RayCronJob", "netmon-cost")
    minute, *rest = cron["spec"]["schedule"].split()
    assert rest == ["*", "*", "*", "*"] and 0 <= int(minute) < 60   # hourly by default
    job = cron["spec"]["jobTemplate"]
    assert job["shutdownAfterJobFinishes"] is True and job["ttlSecondsAfterFinished"] > 0
    assert job["activeDeadlineSeconds"] < 3600      # a run ends before the next tick
    assert job["rayClusterSpec"]["workerGroupSpecs"]
    assert job["entrypoint"].split()[:2] == ["netmon-jobs", "cost"]
    # The operator puts the entrypoint into the submitter container's args, where Kubernetes
    # expands $(VAR) from that container's env; an undefined one would reach bash literally.
    assert job["submissionMode"] == "K8sJobMode"
    [sub] = job["submitterPodTemplate"]["spec"]["containers"]
    sub_env = env_of(sub, objs)
    refs = re.findall(r"\$\((\w+)\)", job["entrypoint"])
    assert refs == ["NETMON_LAKE"]
    assert all(sub_env.get(r) for r in refs)
    lake = env_of(job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0], objs)["NETMON_LAKE"]
    assert sub_env["NETMON_LAKE"] == lake
    # The submitter gets no credentials: only the Ray pods talk to the lake.
    assert not any("secretRef" in s for s in sub.get("envFrom", []))
    assert not any("secretKeyRef" in e.get("valueFrom", {}) for e in sub.get("env", []))


def test_every_reference_resolves(rendered):
    target, objs = rendered
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    data = {(o["kind"], o["metadata"]["name"]): set(o.get("data", {})) for o in objs if o["kind"] in ("ConfigMap", "Secret")}
    optional_missing = set()

    def check(kind, name, key=None, optional=False):
        if (kind, name) not in names:
            assert optional, f"{target}: {kind}/{name} referenced but not rendered"
            optional_missing.add((kind, name))
        elif key is not None:
            assert key in data[(kind, name)], f"{target}: {kind}/{name} has no key {key}"

    for where, obj, pod in all_pods(objs):
        assert obj["metadata"]["namespace"] == "netmon"
        if "priorityClassName" in pod:
            check("PriorityClass", pod["priorityClassName"])
        for c in containers(pod):
            for src in c.get("envFrom", []):
                for field, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                    if field in src:
                        check(kind, src[field]["name"], optional=src[field].get("optional", False))
            for e in c.get("env", []):
                for field, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                    ref = e.get("valueFrom", {}).get(field)
                    if ref:
                        check(kind, ref["name"], ref["key"], optional=ref.get("optional", False))
        for v in pod.get("volumes", []):
            if "configMap" in v:
                check("ConfigMap", v["configMap"]["name"], optional=v["configMap"].get("optional", False))
            if "secret" in v:
                check("Secret", v["secret"]["secretName"], optional=v["secret"].get("optional", False))
            if "persistentVolumeClaim" in v:
                check("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"])
    for o in objs:
        if o["kind"] == "ClusterRoleBinding":
            check("ClusterRole", o["roleRef"]["name"])
            for s in o["subjects"]:
                check("ServiceAccount", s["name"])
    # Only the static-credentials Secret may be absent, and only where IRSA / workload
    # identity supplies credentials instead; dev must create it.
    assert optional_missing <= {("Secret", "netmon-s3-credentials")}
    assert not optional_missing if target == "overlays/dev" else optional_missing


def test_images_pinned_and_consistent(rendered):
    _, objs = rendered
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        version = tomllib.load(f)["project"]["version"]
    images = {c["image"] for _, _, pod in all_pods(objs) for c in containers(pod)}
    for image in images:
        name, tag, digest = split_image(image)
        assert digest or (tag and tag != "latest"), f"{image} is not pinned"
        if name.rsplit("/", 1)[-1] in ("netmon-agent", "netmon-jobs"):
            assert tag == version, f"{image}: tag should be the package version {version}"
    cron = one(objs, "RayCronJob", "netmon-cost")
    assert cron["spec"]["jobTemplate"]["rayClusterSpec"]["rayVersion"] == constraint("ray")


# --------------------------------------------------------------------------- overlays

def test_dev_pipeline_points_at_minio(dev):
    storage = one(dev, "ConfigMap", "netmon-storage")["data"]
    assert storage["NETMON_LAKE"] == "s3://netmon/lake"
    assert storage["NETMON_S3_ENDPOINT"] == "http://minio.netmon.svc:9000"
    endpoint = urlparse(storage["NETMON_S3_ENDPOINT"])
    svc_name, svc_ns = endpoint.hostname.split(".")[:2]
    svc = one(dev, "Service", svc_name)
    assert svc["metadata"]["namespace"] == svc_ns
    assert endpoint.port in [p["port"] for p in svc["spec"]["ports"]]
    minio = one(dev, "Deployment", "minio")
    assert svc["spec"]["selector"].items() <= minio["spec"]["template"]["metadata"]["labels"].items()
    # The bucket Job creates the bucket of the lake URL, with the credentials the pipeline uses.
    job = one(dev, "Job", "minio-create-bucket")
    [mc] = job["spec"]["template"]["spec"]["containers"]
    bucket = urlparse(storage["NETMON_LAKE"]).netloc
    assert f"lake/{bucket}" in mc["args"][0].split()
    assert {"secretRef": {"name": "netmon-s3-credentials"}} in mc["envFrom"]
    root_user = [e for e in minio["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] == "MINIO_ROOT_USER"]
    assert root_user[0]["valueFrom"]["secretKeyRef"] == {"name": "netmon-s3-credentials", "key": "AWS_ACCESS_KEY_ID"}
    # Every netmon component reads the same ConfigMap and Secret.
    for where, obj, pod in all_pods(dev):
        if obj["metadata"]["name"].startswith("netmon-") and "submitter" not in where:
            env_from = pod["containers"][0]["envFrom"]
            assert {"configMapRef": {"name": "netmon-storage"}} in env_from, where
            assert any(s.get("secretRef", {}).get("name") == "netmon-s3-credentials" for s in env_from), where


def test_aws_uses_irsa_and_no_static_keys(aws):
    for sa in ("netmon-agent", "netmon-inventory", "netmon-job"):
        arn = one(aws, "ServiceAccount", sa)["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@-]+", arn), arn
    assert not [o for o in aws if o["kind"] == "Secret"]
    storage = one(aws, "ConfigMap", "netmon-storage")["data"]
    assert storage["NETMON_LAKE"].startswith("s3://") and storage["NETMON_S3_ENDPOINT"] == ""
    assert one(aws, "ServiceAccount", "netmon-job")["automountServiceAccountToken"] is False


# --------------------------------------------------------------------------- images

def constraint(package: str) -> str:
    with open(os.path.join(ROOT, "constraints.txt")) as f:
        for line in f:
            name, _, pin = line.strip().partition("==")
            if name.lower() == package:
                return pin
    raise AssertionError(f"{package} not pinned in constraints.txt")


def dockerfile(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    with open(os.path.join(ROOT, "docker", name)) as f:
        text = f.read()
    text = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instr, _, args = line.partition(" ")
            out.append((instr.upper(), args.strip()))
    return out


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    excluded = False
    with open(os.path.join(ROOT, ".dockerignore")) as f:
        for pat in (p.strip() for p in f):
            if not pat or pat.startswith("#"):
                continue
            neg = pat.startswith("!")
            pat = pat.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pat) or path.startswith(pat + "/"):
                excluded = not neg
    return excluded


@pytest.mark.parametrize("name", ["agent.Dockerfile", "jobs.Dockerfile"])
def test_dockerfile_pins_and_sources(name):
    instrs = dockerfile(name)
    froms = [a for i, a in instrs if i == "FROM"]
    assert len(froms) == 1
    image, tag, _ = split_image(froms[0])
    assert tag and tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), f"{froms[0]} is not pinned to a release"
    copies = [a.split() for i, a in instrs if i == "COPY"]
    assert copies
    for args in copies:
        for src in (a for a in args[:-1] if not a.startswith("--")):
            assert os.path.exists(os.path.join(ROOT, src)), f"{name}: COPY {src}: no such path in the repo"
            assert not dockerignore_excludes(src.rstrip("/")), f"{name}: COPY {src} is excluded by .dockerignore"
    runs = " ".join(a for i, a in instrs if i == "RUN")
    assert "-c constraints.txt" in runs
    extra = "agent" if name == "agent.Dockerfile" else "jobs"
    assert f'".[{extra}]"' in runs
    if name == "agent.Dockerfile":
        assert image == "python" and tag.endswith("-slim-bookworm")
        for pkg in ("bpfcc-tools", "python3-bpfcc", "conntrack", "nftables", "iproute2"):
            assert re.search(rf"\b{pkg}\b", runs), pkg
        assert "/usr/lib/python3/dist-packages/bcc" in runs
        # node_agent/bpfload.py looks for the C sources at node_agent/../bpf: both are copied
        # side by side and the package is installed in place (editable), not into site-packages.
        assert ("COPY", "bpf/ bpf/") in instrs and ("COPY", "node_agent/ node_agent/") in instrs
        assert '-e ".[agent]"' in runs
        # the accounter's compact state is compiled in the image (setup.py), and checked there
        assert "setup.py" in next(a for i, a in instrs if i == "COPY" and "pyproject.toml" in a)
        assert "import node_agent._cttable" in runs
        assert ("ENTRYPOINT", '["netmon-agent"]') in instrs
    else:
        assert image == "rayproject/ray" and tag == f"{constraint('ray')}-py311"
        assert [a for i, a in instrs if i == "USER"][-1] == "1000"


def test_cost_job_cells_fit_the_workers(rendered):
    """The cell size the driver is given (NETMON_CELL_ROWS on the head, where the entrypoint
    runs) makes cells whose declared memory lets every worker CPU run one at a time: worker
    memory minus its object store holds num-cpus cells. The CLI accepts the value."""
    from jobs import cells as CL
    from jobs.cli import _parser

    _, objs = rendered
    spec = one(objs, "RayCronJob", "netmon-cost")["spec"]["jobTemplate"]["rayClusterSpec"]
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    rows = int(env_of(head, objs)["NETMON_CELL_ROWS"])
    assert _parser().parse_args(["cost", "--lake", "/x", "--cell-rows", str(rows)]).cell_rows == rows
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"   # cells run on workers only
    units = {"Mi": 1 << 20, "Gi": 1 << 30}
    for group in spec["workerGroupSpecs"]:
        [c] = group["template"]["spec"]["containers"]
        res = c["resources"]
        assert res["requests"] == res["limits"], group["groupName"]
        mem = res["limits"]["memory"]
        mem_bytes = int(mem[:-2]) * units[mem[-2:]]
        cpus = int(group["rayStartParams"]["num-cpus"])
        assert cpus == int(res["limits"]["cpu"])
        store = int(group["rayStartParams"]["object-store-memory"])
        assert store <= mem_bytes // 3
        assert cpus * CL.memory_for(rows) <= mem_bytes - store, (group["groupName"], rows)
