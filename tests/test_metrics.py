"""GET /metrics: Prometheus text on the XML-RPC port."""

import http.client

from prometheus_client.parser import text_string_to_metric_families

from tests.images_helpers import ok
from tests.waiting import wait_for


def _metrics(address):
    host, port = address.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type").startswith("text/plain; version=")
        return {family.name: family for family in text_string_to_metric_families(response.read().decode())}
    finally:
        conn.close()


def _value(family, name, **labels):
    for sample in family.samples:
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
            return sample.value
    return None


def test_calls_errors_and_latency(hsmd):
    proxy = hsmd.proxy()
    before = _value(_metrics(hsmd.address)["hsm_rpc_calls"], "hsm_rpc_calls_total", verb="ping") or 0
    for _ in range(5):
        proxy.ping()
    proxy.getHsmConfig("nosuch")
    proxy.getHsmConfig("nosuch")
    families = _metrics(hsmd.address)
    assert _value(families["hsm_rpc_calls"], "hsm_rpc_calls_total", verb="ping") == before + 5
    assert _value(families["hsm_rpc_errors"], "hsm_rpc_errors_total", code="1000") == 2
    latency = families["hsm_rpc_latency_seconds"]
    assert latency.type == "histogram"
    assert _value(latency, "hsm_rpc_latency_seconds_count", verb="getHsmConfig") == 2
    assert _value(latency, "hsm_rpc_latency_seconds_bucket", verb="getHsmConfig", le="+Inf") == 2
    assert 0 < _value(latency, "hsm_rpc_latency_seconds_sum", verb="getHsmConfig") < 1
    assert families["hsm_tasks"].type == "gauge"
    assert families["hsm_repository_up"].type == "gauge"


def test_repository_health_is_one_answer_for_metrics_and_get_stats(make_hsmd, tmp_path):
    daemon = make_hsmd(config={"irs": {"sd_health_check_delay": 0.2}}).start()
    proxy = daemon.proxy()
    second = tmp_path / "second"
    second.mkdir()
    ok(proxy.createStorageRepository("localfs-1", {"path": str(second)}, {}))
    ok(proxy.connectStorageRepository("second", "localfs-1", {"path": str(second)}, {}))

    def seen() -> tuple[dict, dict]:
        families = _metrics(daemon.address)
        metrics = {repo: (_value(families["hsm_repository_up"], "hsm_repository_up", repo=repo),
                          _value(families["hsm_repository_free_bytes"], "hsm_repository_free_bytes", repo=repo),
                          _value(families["hsm_repository_size_bytes"], "hsm_repository_size_bytes", repo=repo))
                   for repo in ("local", "second")}
        return metrics, ok(proxy.getStats())["stats"]["repositories"]

    metrics, stats = seen()
    for repo in ("local", "second"):
        up, free, size = metrics[repo]
        assert up == 1 and stats[repo]["valid"] is True
        assert 0 < free <= size and int(stats[repo]["totalBytes"]) == size
    (second / "repository.json").unlink()  # the storage no longer holds the repository
    metrics, stats = wait_for(lambda: (found := seen())[0]["second"][0] == 0 and found, what="second down")
    assert stats["second"]["valid"] is False
    assert metrics["local"][0] == 1 and stats["local"]["valid"] is True
