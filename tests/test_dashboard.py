"""The Grafana dashboard (deploy/grafana/fracgpu-dashboard.json) queries only series the extender and the node
agent export, with the labels they export them with."""

import json
import re
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.api_helpers import bind_args, filter_args, gpu_node, gpu_pod, post, start

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "fracgpu-dashboard.json"
# what a query may name besides series: PromQL's functions, aggregations and keywords, and the labels it groups by
PROMQL = {"sum", "count", "rate", "histogram_quantile", "by", "and", "bool"}


def queries() -> list[tuple[str, str]]:
    """(expression, legend) of every panel target."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(t["expr"], t.get("legendFormat", "")) for p in panels for t in p["targets"]]


def series_of(text: str, series: dict[str, set[str]]) -> None:
    """Series name -> label names, added from one exposition."""
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(family.type, ("",))
        for suffix in suffixes:  # declared, even before its first sample (the connection cap's counter)
            series.setdefault(family.name + suffix, set())
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)


def scrape_agent(tmp_path) -> str:
    """/metrics of an agent whose node runs a pod over its share on one GPU, and a host process on another."""
    from extender.agent.fake import FakeNvml
    from extender.agent.monitor import MonitorSettings, UsageMonitor
    from tests.test_agent_usage import CID, POD_UID, FakeApi, cgroup_v1
    from tests.test_agent_usage import gpu_pod as bound_pod

    nvml = FakeNvml.fixture("h100x8-nvswitch")
    nvml.nvmlInit()
    for pid, gpu, cgroup in ((100, 0, cgroup_v1(POD_UID, CID)), (200, 1, "0::/system.slice/dcgm.service\n")):
        nvml.gpus[gpu]["processes"] = [{"pid": pid, "usedMiB": 3000, "smUtil": 50}]
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cgroup").write_text(cgroup)
    api = FakeApi([bound_pod("infer", POD_UID, {"main": CID}, {"main": [(0, 2048)]})])
    monitor = UsageMonitor(nvml, api, "gpu-1", MonitorSettings(proc_root=tmp_path))
    monitor.observe()
    return generate_latest(monitor.registry).decode()


async def scrape(aiohttp_client, tmp_path) -> dict[str, set[str]]:
    """Series name -> label names, from an extender that has filtered (one node rejected) and bound a pod, and
    from an agent (:func:`scrape_agent`)."""
    nodes = [gpu_node("a", gpus=1, pool="training"), gpu_node("b", gpus=1)]
    client, _, source = await start(aiohttp_client, nodes)
    pod = gpu_pod("p", units=25, memory_mib=2000)
    source.add_pod(pod)
    await post(client, "filter", filter_args(pod, names=["a", "b"]))
    await post(client, "bind", bind_args(pod, "b"))
    series: dict[str, set[str]] = {}
    series_of(await (await client.get("/metrics")).text(), series)
    series_of(scrape_agent(tmp_path), series)
    return series


async def test_every_series_the_dashboard_queries_is_exported_with_its_labels(aiohttp_client, tmp_path):
    exported = await scrape(aiohttp_client, tmp_path)
    assert len(queries()) >= 17
    for expr, legend in queries():
        names = set(re.findall(r"\bfracgpu_[a-z_]+\b", expr))
        assert names, f"a panel queries no fracgpu series: {expr}"
        missing = names - set(exported)
        assert not missing, f"{expr}: not exported: {missing}"
        labels = set().union(*(exported[n] for n in names))
        grouped = {label.strip() for group in re.findall(r"by \(([^)]*)\)", expr) for label in group.split(",")}
        used = grouped | set(re.findall(r"\{\{(\w+)\}\}", legend))
        populated = [n for n in names if exported[n]]  # series with samples: their labels are known
        if populated:
            assert used - {"le"} <= labels, f"{expr}: labels {used - labels} are not on {names}"
        words = set(re.findall(r"\b[a-z_]+\b", re.sub(r"\{\{\w+\}\}|\[\d+m\]", "", expr))) - names - used
        assert words <= PROMQL, f"{expr}: names {words - PROMQL} that are neither series nor PromQL"
