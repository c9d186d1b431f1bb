"""Shared helpers for the API tests: a static cluster, an app over it, and protocol calls."""

import asyncio
import random

from extender.api.app import EXTENDER, create_app
from extender.api.settings import load_settings
from extender.api.static import StaticCluster
from extender.testing.factories import gpu_node, gpu_pod


class SlowCluster(StaticCluster):
    """A static cluster whose binds take a while (seeded), so concurrent binds interleave."""

    def __init__(self, nodes, pods, *, seed=0, fail=()):
        super().__init__(nodes, pods)
        self.rng = random.Random(seed)
        self.fail = set(fail)
        self.bind_calls = 0

    async def bind(self, **kwargs):
        self.bind_calls += 1
        await asyncio.sleep(self.rng.random() / 200)
        if kwargs["name"] in self.fail:
            raise ConnectionError("API server unreachable")
        await super().bind(**kwargs)


def settings(**flags):
    return load_settings(env={}, flags=flags)


async def start(aiohttp_client, nodes, pods=(), *, source_cls=StaticCluster, **flags):
    source = source_cls(list(nodes), list(pods))
    app = create_app(settings(**flags), source=source)
    client = await aiohttp_client(app)
    for _ in range(100):
        if app[EXTENDER].synced:
            break
        await asyncio.sleep(0.01)
    return client, app[EXTENDER], source


async def post(client, verb, payload, status=200):
    response = await client.post(f"/{verb}", json=payload)
    assert response.status == status, await response.text()
    return await response.json()


def filter_args(pod, names=None, nodes=None):
    return {"Pod": pod, "Nodes": {"items": nodes} if nodes is not None else None, "NodeNames": names}


def bind_args(pod, node):
    meta = pod["metadata"]
    return {"PodName": meta["name"], "PodNamespace": meta["namespace"], "PodUID": meta["uid"], "Node": node}


__all__ = ["SlowCluster", "bind_args", "filter_args", "gpu_node", "gpu_pod", "post", "settings", "start"]
