"""Informer and PodIndex against the fake API server, driving the real kubernetes client."""
from __future__ import annotations

import json
import threading
import time

import pytest
from kubernetes import client as k8s_client

from fake_apiserver import FakeApiServer
from node_agent.informer import Informer, PodIndex
from node_agent.kube import load_api_client

pytestmark = pytest.mark.slow   # starts an HTTP server

FAST = dict(backoff_initial=0.05, backoff_max=0.2, request_timeout=5.0)


def wait_until(cond, timeout: float = 20.0, what: str = "condition"):
    """Poll `cond` until it is truthy; the timeout is generous, it only bounds a failure."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def pod(name, node=None, ips=(), ns="default", host_network=False, phase="Running", labels=None):
    return {
        "metadata": {"name": name, "namespace": ns, "labels": labels or {"app": name}},
        "spec": {"nodeName": node, "hostNetwork": host_network, "containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": phase, **({"podIP": ips[0], "podIPs": [{"ip": i} for i in ips]} if ips else {})},
    }


@pytest.fixture
def server():
    srv = FakeApiServer().start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def api(server, tmp_path, monkeypatch):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    client = load_api_client(server.write_kubeconfig(tmp_path / "kubeconfig"))
    yield client
    client.close()


@pytest.fixture
def informers():
    started: list = []
    yield started
    for inf in started:
        inf.stop()


def truth(server, resource="pods", pred=lambda o: True):
    """uid -> resourceVersion of the server's objects (what a converged store must hold)."""
    return {o["metadata"]["uid"]: o["metadata"]["resourceVersion"] for o in server.objects(resource) if pred(o)}


def store(inf):
    return {o["metadata"]["uid"]: o["metadata"]["resourceVersion"] for o in inf.items()}


class Recorder:
    def __init__(self):
        self.events: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def add(self, o):
        with self.lock:
            self.events.append(("add", o["metadata"]["name"]))

    def update(self, old, new):
        assert old["metadata"]["uid"] == new["metadata"]["uid"]
        assert old["metadata"]["resourceVersion"] != new["metadata"]["resourceVersion"]
        with self.lock:
            self.events.append(("update", new["metadata"]["name"]))

    def delete(self, o):
        with self.lock:
            self.events.append(("delete", o["metadata"]["name"]))

    def seen(self):
        with self.lock:
            return list(self.events)


def pod_informer(api, informers, **kw):
    core = k8s_client.CoreV1Api(api)
    inf = Informer(core.list_pod_for_all_namespaces, name="pods", **{**FAST, **kw})
    informers.append(inf)
    return inf.start()


# ------------------------------------------------------------------------------ informer


def test_list_then_watch_applies_adds_updates_deletes(server, api, informers):
    for name, ns in (("a", "default"), ("b", "default"), ("c", "kube-system")):
        server.create("pods", pod(name, "n1", ns=ns))
    rec = Recorder()
    inf = pod_informer(api, informers, on_add=rec.add, on_update=rec.update, on_delete=rec.delete)
    assert inf.wait_synced(20)
    assert store(inf) == truth(server)
    assert sorted(rec.seen()) == [("add", "a"), ("add", "b"), ("add", "c")]

    server.create("pods", pod("d", "n2"))
    changed = server.get("pods", "a")
    changed["status"]["phase"] = "Failed"
    server.update("pods", changed)
    server.delete("pods", "b")
    wait_until(lambda: len(rec.seen()) == 6, what="three watch events")
    assert rec.seen()[3:] == [("add", "d"), ("update", "a"), ("delete", "b")]
    assert store(inf) == truth(server)
    a = next(o for o in inf.items() if o["metadata"]["name"] == "a")
    assert a["status"]["phase"] == "Failed"
    assert inf.resource_version == str(server.resource_version)
    st = inf.stats()
    assert (st["lists"], st["relists"], st["events"], st["objects"], st["synced"]) == (1, 0, 3, 3, 1)
    # The watch asked for bookmarks and a server-side timeout, from the list's resourceVersion.
    assert server.count_requests("/api/v1/pods", watch="true", allowWatchBookmarks="true", timeoutSeconds=None) >= 1


def test_pagination_reads_a_consistent_snapshot_then_watches_the_rest(server, api, informers):
    for i in range(25):
        server.create("pods", pod(f"p{i:02d}", "n1"))
    core = k8s_client.CoreV1Api(api)
    pages = []

    def list_func(**kw):
        # Between pages, the cluster changes: the pages must still be one snapshot, and the
        # watch from the snapshot's resourceVersion must deliver the changes.
        if not kw.get("watch"):
            pages.append(kw.get("_continue"))
            if len(pages) == 2:
                server.delete("pods", "p24")
                server.create("pods", pod("zz-new", "n1"))
        return core.list_pod_for_all_namespaces(**kw)

    rec = Recorder()
    inf = Informer(list_func, name="pods", page_size=10, on_add=rec.add, on_update=rec.update,
                   on_delete=rec.delete, **FAST)
    informers.append(inf)
    inf.start()
    assert inf.wait_synced(20)
    assert len(pages) == 3 and pages[0] is None and all(pages[1:])
    assert server.count_requests("/api/v1/pods", limit="10") == 3
    wait_until(lambda: store(inf) == truth(server), what="store == server after watch")
    # The three pages were one snapshot (p24 in it, zz-new not), and the watch from the
    # snapshot's resourceVersion delivered exactly the changes made between pages, in order.
    events = rec.seen()
    assert sorted(events[:25]) == [("add", f"p{i:02d}") for i in range(25)]
    assert events[25:] == [("delete", "p24"), ("add", "zz-new")]


def test_expired_continue_token_restarts_the_list(server, api, informers):
    for i in range(12):
        server.create("pods", pod(f"p{i:02d}", "n1"))
    core = k8s_client.CoreV1Api(api)
    calls = []

    def list_func(**kw):
        if not kw.get("watch"):
            calls.append(kw.get("_continue"))
            if len(calls) == 2:
                server.create("pods", pod("late", "n1"))
                server.compact()      # the first page's snapshot is gone: continue -> 410
        return core.list_pod_for_all_namespaces(**kw)

    inf = Informer(list_func, name="pods", page_size=5, **FAST)
    informers.append(inf)
    inf.start()
    assert inf.wait_synced(20)
    assert store(inf) == truth(server)
    assert len(inf.items()) == 13
    st = inf.stats()
    assert st["expired"] == 1 and st["lists"] == 1      # the broken list never counted as one
    assert calls[0] is None and calls[1] and calls[2] is None


@pytest.mark.parametrize("as_http_status", [False, True], ids=["error-event", "http-410"])
def test_gone_relists_and_converges_to_server_truth(tmp_path, informers, as_http_status):
    server = FakeApiServer(expired_as_http_status=as_http_status).start()
    try:
        api = load_api_client(server.write_kubeconfig(tmp_path / "kubeconfig"))
        for name in ("keep", "change", "remove"):
            server.create("pods", pod(name, "n1"))
        rec = Recorder()
        inf = pod_informer(api, informers, on_add=rec.add, on_update=rec.update, on_delete=rec.delete)
        assert inf.wait_synced(20)
        old_rv = inf.resource_version

        server.stop()                          # the agent is cut off ...
        changed = server.get("pods", "change")
        changed["metadata"]["labels"]["v"] = "2"
        server.update("pods", changed)
        server.delete("pods", "remove")
        server.create("pods", pod("added", "n1"))
        server.compact()                       # ... and history it missed is compacted away
        wait_until(lambda: inf.stats()["reconnects"] >= 1, what="a failed reconnect")
        server.start()

        wait_until(lambda: store(inf) == truth(server), what="store == server after relist")
        assert int(inf.resource_version) > int(old_rv)
        st = inf.stats()
        assert st["expired"] >= 1 and st["relists"] >= 1
        assert sorted(rec.seen()[3:]) == [("add", "added"), ("delete", "remove"), ("update", "change")]
        obj = next(o for o in inf.items() if o["metadata"]["name"] == "change")
        assert obj["metadata"]["labels"]["v"] == "2"
    finally:
        server.stop()


def test_server_restart_reconnects_with_backoff_and_resumes_without_relist(server, api, informers):
    server.create("pods", pod("before", "n1"))
    inf = pod_informer(api, informers)
    assert inf.wait_synced(20)
    server.stop()
    server.create("pods", pod("during", "n1"))     # happens while the agent cannot see it
    wait_until(lambda: inf.stats()["reconnects"] >= 3, what="repeated reconnect attempts")
    assert not any(o["metadata"]["name"] == "during" for o in inf.items())
    server.start()
    wait_until(lambda: store(inf) == truth(server), what="store == server after restart")
    st = inf.stats()
    assert st["relists"] == 0 and st["expired"] == 0    # resumed the watch from its resourceVersion
    assert "during" in {o["metadata"]["name"] for o in inf.items()}


def test_backoff_is_exponential_capped_and_jittered():
    inf = Informer(lambda **kw: None, backoff_initial=0.8, backoff_max=30.0)
    for failures in range(1, 40):
        nominal = min(30.0, 0.8 * 2 ** (failures - 1))
        delays = {inf._backoff(failures) for _ in range(50)}
        assert all(nominal / 2 <= d <= nominal for d in delays)
        assert len(delays) > 1                      # jittered, not a fixed schedule
    assert max(inf._backoff(100) for _ in range(50)) <= 30.0


def test_dropped_watch_resumes_and_misses_nothing(server, api, informers):
    inf = pod_informer(api, informers)
    assert inf.wait_synced(20)
    watches = server.count_requests("/api/v1/pods", watch="true")
    server.drop_watches()
    server.create("pods", pod("after-drop", "n1"))
    wait_until(lambda: store(inf) == truth(server) and len(truth(server)) == 1, what="event after drop")
    assert server.count_requests("/api/v1/pods", watch="true") > watches
    assert inf.stats()["relists"] == 0


def test_bookmarks_advance_resource_version_and_spare_a_relist(server, api, informers):
    server.create("pods", pod("mine", "n1"))
    core = k8s_client.CoreV1Api(api)
    inf = Informer(core.list_pod_for_all_namespaces, field_selector="spec.nodeName=n1", name="n1", **FAST)
    informers.append(inf)
    inf.start()
    assert inf.wait_synced(20)
    wait_until(lambda: server.open_watches >= 1, what="watch open")
    for i in range(5):                                   # other nodes' churn: not our events
        server.create("pods", pod(f"other{i}", "n2"))
    assert int(inf.resource_version) < server.resource_version
    server.send_bookmarks()
    wait_until(lambda: inf.resource_version == str(server.resource_version), what="bookmark rv")
    assert inf.stats()["bookmarks"] >= 1

    # History up to now is compacted and the watch is cut: resuming from the bookmark's
    # resourceVersion is still valid, so no relist (without the bookmark it would be a 410).
    server.compact()
    server.drop_watches()
    server.create("pods", pod("mine2", "n1"))
    wait_until(lambda: len(inf.items()) == 2, what="event after reconnect")
    st = inf.stats()
    assert st["expired"] == 0 and st["relists"] == 0
    assert {o["metadata"]["name"] for o in inf.items()} == {"mine", "mine2"}


def test_watch_timeout_ends_cleanly_and_rewatches(server, api, informers):
    inf = pod_informer(api, informers, watch_timeout=1)
    assert inf.wait_synced(20)
    wait_until(lambda: server.count_requests("/api/v1/pods", watch="true", timeoutSeconds="1") >= 3,
               what="several server-timed-out watches")
    server.create("pods", pod("x", "n1"))
    wait_until(lambda: len(inf.items()) == 1, what="event on a renewed watch")
    st = inf.stats()
    assert st["reconnects"] == 0 and st["relists"] == 0


def test_handler_errors_are_counted_not_fatal(server, api, informers):
    def boom(obj):
        raise ValueError("handler bug")

    inf = pod_informer(api, informers, on_add=boom)
    assert inf.wait_synced(20)
    server.create("pods", pod("one", "n1"))
    server.create("pods", pod("two", "n1"))
    wait_until(lambda: len(inf.items()) == 2, what="both events applied")
    assert inf.stats()["handler_errors"] == 2


def test_stop_ends_the_thread_blocked_in_a_watch(server, api):
    inf = Informer(k8s_client.CoreV1Api(api).list_pod_for_all_namespaces, name="pods", **FAST).start()
    assert inf.wait_synced(20)
    wait_until(lambda: server.open_watches >= 1, what="watch open")
    inf.stop(timeout=10)
    assert not inf._thread.is_alive()


def test_wrong_credentials_never_sync_and_say_why(server, tmp_path, informers):
    api = load_api_client(server.write_kubeconfig(tmp_path / "wrong", token="wrong"))
    inf = pod_informer(api, informers)
    wait_until(lambda: inf.stats()["reconnects"] >= 2, what="retries")
    assert not inf.synced
    assert "401" in (inf.last_error or "")


# ------------------------------------------------------------------------------ pod index


class Clock:
    """A monotonic clock the test moves (deleted pods' retention)."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def index(api, node, informers, **kw):
    idx = PodIndex(api, node, **{**FAST, **kw})
    informers.append(idx)
    assert idx.wait_synced(20)
    return idx


def test_pod_index_is_node_filtered_dual_stack_and_knows_host_network(server, api, informers):
    server.create("pods", pod("web", "n1", ["10.1.0.5", "fd00:10:1:0:0:0:0:5"]))
    server.create("pods", pod("db", "n1", ["10.1.0.6"], ns="data"))
    server.create("pods", pod("proxy", "n1", ["192.168.0.10"], ns="kube-system", host_network=True))
    server.create("pods", pod("elsewhere", "n2", ["10.2.0.7", "fd00:10:2::7"]))
    server.create("pods", pod("pending", None))
    idx = index(api, "n1", informers, page_size=2)

    assert idx.lookup("10.1.0.5") == ("web", "default", False)
    assert idx.lookup("fd00:10:1::5") == ("web", "default", False)      # canonical IPv6 form
    assert idx.lookup("10.1.0.6") == ("db", "data", False)
    assert idx.lookup("192.168.0.10") == ("proxy", "kube-system", True)
    assert idx.lookup("10.2.0.7") is None and idx.lookup("fd00:10:2::7") is None
    assert idx.local_ips() == {"10.1.0.5", "fd00:10:1::5", "10.1.0.6"}
    # Only this node's pods were ever requested.
    assert server.count_requests("/api/v1/pods", fieldSelector="spec.nodeName=n1") >= 2
    assert server.count_requests("/api/v1/pods", fieldSelector=None) == server.count_requests("/api/v1/pods")
    assert idx.stats()["objects"] == 3


def test_pod_index_follows_ip_changes_binding_and_deletion(server, api, informers):
    server.create("pods", pod("web", "n1", ["10.1.0.5"]))
    server.create("pods", pod("unscheduled", None))
    clock = Clock()
    idx = index(api, "n1", informers, clock=clock, retain_deleted=180)
    assert idx.local_ips() == {"10.1.0.5"}

    web = server.get("pods", "web")
    web["status"]["podIP"], web["status"]["podIPs"] = "10.1.0.9", [{"ip": "10.1.0.9"}, {"ip": "fd00::9"}]
    server.update("pods", web)
    wait_until(lambda: idx.lookup("10.1.0.9"), what="new IP")
    assert idx.lookup("10.1.0.5") is None
    assert idx.local_ips() == {"10.1.0.9", "fd00::9"}

    # Scheduled onto n1 and given an IP: enters the node's selection as an ADDED event.
    late = server.get("pods", "unscheduled")
    late["spec"]["nodeName"] = "n1"
    late["status"].update(podIP="10.1.0.20", podIPs=[{"ip": "10.1.0.20"}])
    server.update("pods", late)
    wait_until(lambda: idx.lookup("10.1.0.20") == ("unscheduled", "default", False), what="bound pod")

    server.delete("pods", "web")
    wait_until(lambda: idx.stats()["deleted_retained"] == 1, what="deletion seen")
    # a deleted pod keeps its IPs for the retention (its last connections' bytes stay its own)
    assert idx.lookup("10.1.0.9") == idx.lookup("fd00::9") == ("web", "default", False)
    assert idx.local_ips() == {"10.1.0.20", "10.1.0.9", "fd00::9"}
    clock.t += 179
    assert idx.lookup("10.1.0.9") == ("web", "default", False)
    clock.t += 2
    assert idx.lookup("10.1.0.9") is None and idx.lookup("fd00::9") is None
    assert idx.local_ips() == {"10.1.0.20"}


def test_pod_index_prefers_the_running_pod_when_an_ip_is_reused(server, api, informers):
    server.create("pods", pod("job-done", "n1", ["10.1.0.7"], phase="Succeeded"))
    clock = Clock()
    idx = index(api, "n1", informers, clock=clock, retain_deleted=60)
    assert idx.lookup("10.1.0.7") == ("job-done", "default", False)
    server.create("pods", pod("new-owner", "n1", ["10.1.0.7"]))
    wait_until(lambda: idx.lookup("10.1.0.7") == ("new-owner", "default", False), what="running pod wins")
    server.delete("pods", "new-owner")
    # a live claimant (even a finished one) wins over a deleted pod's retained claim
    wait_until(lambda: idx.lookup("10.1.0.7") == ("job-done", "default", False), what="fallback to finished pod")
    server.delete("pods", "job-done")
    wait_until(lambda: idx.stats()["deleted_retained"] == 2, what="both deleted")
    assert idx.lookup("10.1.0.7") == ("new-owner", "default", False)   # retained: the better of the two
    server.create("pods", pod("third", "n1", ["10.1.0.7"]))
    wait_until(lambda: idx.lookup("10.1.0.7") == ("third", "default", False), what="a live pod wins over retained ones")
    server.delete("pods", "third")
    wait_until(lambda: idx.stats()["deleted_retained"] == 3, what="third deleted")
    clock.t += 61
    assert idx.lookup("10.1.0.7") is None
    assert idx.local_ips() == set()


def test_pod_index_converges_after_410(server, api, informers):
    server.create("pods", pod("a", "n1", ["10.1.0.1"]))
    server.create("pods", pod("b", "n1", ["10.1.0.2"]))
    clock = Clock()
    idx = index(api, "n1", informers, clock=clock, retain_deleted=180)
    server.stop()
    server.delete("pods", "a")
    b = server.get("pods", "b")
    b["status"].update(podIP="10.1.0.3", podIPs=[{"ip": "10.1.0.3"}])
    server.update("pods", b)
    server.create("pods", pod("c", "n1", ["10.1.0.4"]))
    server.compact()
    server.start()
    # a pod deleted while the watch was down is a deletion found by the relist: retained too
    wait_until(lambda: idx.local_ips() == {"10.1.0.1", "10.1.0.3", "10.1.0.4"}, what="index == server after relist")
    assert idx.lookup("10.1.0.1") == ("a", "default", False) and idx.lookup("10.1.0.2") is None
    assert idx.stats()["relists"] >= 1
    clock.t += 181
    assert idx.local_ips() == {"10.1.0.3", "10.1.0.4"} and idx.lookup("10.1.0.1") is None


# ------------------------------------------------------------------------------ protocol details


def test_namespaced_list_and_label_selector(server, api, informers):
    server.create("pods", pod("web-1", "n1", ns="shop", labels={"app": "web", "tier": "front"}))
    server.create("pods", pod("web-2", "n2", ns="shop", labels={"app": "web", "tier": "back"}))
    server.create("pods", pod("web-3", "n1", ns="other", labels={"app": "web", "tier": "front"}))
    core = k8s_client.CoreV1Api(api)

    def list_shop(**kw):
        return core.list_namespaced_pod("shop", **kw)

    inf = Informer(list_shop, label_selector="app=web,tier in (front)", name="shop-front", **FAST)
    informers.append(inf)
    inf.start()
    assert inf.wait_synced(20)
    assert [o["metadata"]["name"] for o in inf.items()] == ["web-1"]
    # Relabelled into the selection: the watch turns the MODIFIED into an ADDED.
    w2 = server.get("pods", "web-2", "shop")
    w2["metadata"]["labels"]["tier"] = "front"
    server.update("pods", w2)
    wait_until(lambda: len(inf.items()) == 2, what="relabelled pod enters")
    # ... and out of it: a DELETED for this watch, though the pod still exists.
    w1 = server.get("pods", "web-1", "shop")
    w1["metadata"]["labels"]["tier"] = "back"
    server.update("pods", w1)
    wait_until(lambda: [o["metadata"]["name"] for o in inf.items()] == ["web-2"], what="relabelled pod leaves")
    assert server.count_requests("/api/v1/namespaces/shop/pods", watch="true") >= 1


def test_official_watch_helper_understands_the_fake_server(server, api):
    """The client's own kubernetes.watch.Watch reads our stream: events, bookmarks, and a 410
    raised as ApiException (so the fake is faithful beyond what Informer itself parses)."""
    from kubernetes import watch
    from kubernetes.client.exceptions import ApiException

    core = k8s_client.CoreV1Api(api)
    server.create("pods", pod("a", "n1", ["10.0.0.1"]))
    listed = core.list_pod_for_all_namespaces()
    assert [p.metadata.name for p in listed.items] == ["a"]
    rv = listed.metadata.resource_version
    server.create("pods", pod("b", "n1", ["10.0.0.2"]))
    server.delete("pods", "a")
    w = watch.Watch()
    seen = []
    for event in w.stream(core.list_pod_for_all_namespaces, resource_version=rv, timeout_seconds=2):
        seen.append((event["type"], event["object"].metadata.name))
        if len(seen) == 2:
            w.stop()
    assert seen == [("ADDED", "b"), ("DELETED", "a")]
    assert w.resource_version == str(server.resource_version)

    server.compact()
    with pytest.raises(ApiException) as exc:
        for _ in watch.Watch().stream(core.list_pod_for_all_namespaces, resource_version=rv, timeout_seconds=2):
            pass
    assert exc.value.status == 410


def test_watch_without_resource_version_starts_with_the_current_state(server, api):
    from kubernetes import watch

    core = k8s_client.CoreV1Api(api)
    server.create("pods", pod("x", "n1"))
    server.create("pods", pod("y", "n2"))
    names = [e["object"].metadata.name
             for e in watch.Watch().stream(core.list_pod_for_all_namespaces, field_selector="spec.nodeName=n1",
                                           timeout_seconds=1)]
    assert names == ["x"]


def test_unsupported_field_selector_is_rejected_like_the_real_server(server, api):
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as exc:
        k8s_client.CoreV1Api(api).list_service_for_all_namespaces(field_selector="spec.clusterIP=1.2.3.4")
    assert exc.value.status == 400


def test_api_lister_speaks_the_generated_functions_dialect(server, api, informers):
    from kubernetes.client.exceptions import ApiException

    from node_agent.informer import api_lister

    server.create("pods", pod("a", "n1"))
    server.create("pods", pod("b", "n2"))
    lister = api_lister(api, "/api/v1/pods")
    resp = lister(field_selector="spec.nodeName=n2", limit=5, _request_timeout=(5, 5))
    body = json.loads(resp.data)
    assert [p["metadata"]["name"] for p in body["items"]] == ["b"]
    assert body["metadata"]["resourceVersion"] == str(server.resource_version)
    with pytest.raises(TypeError, match="pretty"):
        lister(pretty="true")
    with pytest.raises(ApiException) as exc:
        api_lister(api, "/api/v1/widgets")()
    assert exc.value.status == 404
    # An informer on a collection the server does not have keeps retrying and says why.
    inf = Informer(api_lister(api, "/apis/example.com/v1/widgets"), name="widgets", **FAST)
    informers.append(inf.start())
    wait_until(lambda: inf.stats()["reconnects"] >= 2, what="retries")
    assert not inf.synced and "404" in inf.last_error
