"""Traces and clusters for the simulator: the Alibaba "openb" CSVs, our JSONL pod format, Kubernetes Node lists.

Scale: one GPU is 1000 units in the simulator (``UNITS_PER_GPU``), the trace's ``gpu_milli``.

**openb CSVs** (``load_openb_nodes``, ``load_openb_pods``), as published with the FGD paper (README in
``simulator/data/openb``):

* nodes ``sn,cpu_milli,memory_mib,gpu,model``: CPU and memory become the node's host resources; ``gpu``
  GPUs of ``model``, each with the memory of :data:`MODEL_MEMORY_MIB`. The default is the 1213 GPU nodes
  (``openb_node_list_gpu_node.csv``), the cluster of the paper's experiments; the 1523-node list with CPU-only
  nodes ships too;
* pods ``name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,...,creation_time,deletion_time,scheduled_time``:
  ``gpu_milli`` is the share of each GPU (1000 = whole), ``gpu_spec`` the allowed models (``|``-separated,
  empty = any), ``creation_time`` the arrival, ``deletion_time - (scheduled_time or creation_time)`` the
  duration (seconds).
* **GPU memory rule**: the trace has no GPU memory column. A pod gets the proportional share of the GPU it
  lands on, floor(units × GPU memory / 1000), the core's rule for pods that state no memory; so GPU memory never
  refuses a pod whose units fit (as in the paper's simulator, which does not model GPU memory).

**JSONL pods** (``load_jsonl``/``dump_jsonl``), one object per line, everything the extender understands::

    {"name": "p1", "cpu_milli": 4000, "memory_mib": 8192, "gpu_count": 1, "gpu_milli": 500,
     "gpu_memory_mib": null, "models": ["T4", "A10"], "pool": null, "arrival": 12.5, "duration": 3600}

``gpu_count`` 0 is a CPU-only pod; ``gpu_memory_mib`` null = the proportional share; ``models``/``pool``
null = any; ``duration`` null = runs until the end.

**Cluster files**: a Kubernetes ``v1`` List of Nodes (YAML or JSON), the extender's static-mode format: GPUs from
the ``fracgpu.io/gpus`` annotation (or GPU Feature Discovery labels), CPU and memory from
``status.allocatable``. :func:`node_objects` writes one.

Every bad row stops the load with ``TraceError`` naming the file and line of each problem (up to 20).
"""

from __future__ import annotations

import csv
import functools
import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import yaml
from kubernetes.utils.quantity import parse_quantity

from extender.core.errors import CorruptAnnotation
from extender.core.inventory import GpuInfo, NodeInventory, inventory_annotation, parse_node
from extender.core.quantity import parse_integer_quantity
from extender.core.resources import ContainerNeed, PodRequest
from extender.core.settings import GPUS_ANNOTATION, POOL_LABEL, CoreSettings

UNITS_PER_GPU = 1000
SETTINGS = CoreSettings(units_per_gpu=UNITS_PER_GPU, reserve_mib=0, reserve_percent=0)
# GPU memory per model (MiB), as the published simulator lists them. G2 and G3 are Alibaba's names for
# undisclosed models: 16 GiB and 32 GiB are assumptions (they only scale each pod's proportional share, which
# never refuses a pod whose units fit).
MODEL_MEMORY_MIB = {"T4": 15_109, "P100": 16_280, "V100M16": 16_160, "V100M32": 32_510, "A10": 22_731,
                    "G2": 16_384, "G3": 32_768}
DEFAULT_MEMORY_MIB = 16_384
MAX_REPORTED = 20


class TraceError(ValueError):
    """A trace or cluster file that cannot be read; the message lists ``file:line: problem`` entries."""


@dataclass(frozen=True, slots=True)
class SimPod:
    name: str
    cpu_milli: int
    memory_mib: int
    gpu_count: int
    gpu_milli: int  # per GPU, 1..1000 (0 when gpu_count is 0)
    gpu_memory_mib: int | None = None
    models: tuple[str, ...] | None = None
    pool: str | None = None
    arrival: float | None = 0.0  # None: the trace has no arrival times (inflation needs none, replay does)
    duration: float | None = None

    @property
    def total_milli(self) -> int:
        return self.gpu_count * self.gpu_milli

    @property
    def shape_key(self) -> tuple:
        """Everything placement looks at, but the pod's identity: pods with equal keys fit and score alike."""
        return (self.cpu_milli, self.memory_mib, self.gpu_count, self.gpu_milli, self.gpu_memory_mib, self.models,
                self.pool)

    @property
    def shape(self) -> tuple[int, int, int, tuple[str, ...] | None]:
        """The pod as FGD's target workload counts it: (CPU, GPUs, milli per GPU, models)."""
        return self.cpu_milli, self.gpu_count, self.gpu_milli, self.models

    def request(self, uid: str | None = None) -> PodRequest:
        containers = _containers(self.gpu_milli, self.gpu_count, self.gpu_memory_mib) if self.gpu_count else ()
        return PodRequest(uid=uid or self.name, namespace="sim", name=self.name, pool=self.pool, models=self.models,
                          containers=containers, phases=((0,),) if containers else (), cpu_milli=self.cpu_milli,
                          memory_mib=self.memory_mib)


@functools.lru_cache(maxsize=4096)
def _containers(milli: int, count: int, memory_mib: int | None) -> tuple[ContainerNeed, ...]:
    """A simulated pod's one GPU container (immutable: pods of a shape share it)."""
    return (ContainerNeed("main", "app", milli, count, memory_mib),)


def sim_node(name: str, *, cpu_milli: int, memory_mib: int, gpus: int, model: str | None,
             gpu_memory_mib: int | None = None, pool: str | None = None) -> NodeInventory:
    memory = gpu_memory_mib or MODEL_MEMORY_MIB.get(model or "", DEFAULT_MEMORY_MIB)
    infos = tuple(GpuInfo(index=i, uuid=f"{name}-gpu{i}", model=model or "", memory_mib=memory, used_memory_mib=0,
                          healthy=True, numa_node=None, mig=False) for i in range(gpus))
    return NodeInventory(name=name, pool=pool, gpus=infos, links=None, source="simulator", cpu_milli=cpu_milli,
                         memory_mib=memory_mib)


# ---------------------------------------------------------------------------------------------------- readers
class _Problems:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: list[str] = []

    def add(self, line: int, text: str) -> None:
        self.items.append(f"{self.path}:{line}: {text}")

    def raise_if_any(self) -> None:
        if self.items:
            shown = self.items[:MAX_REPORTED]
            more = len(self.items) - len(shown)
            tail = f"\n  ... and {more} more" if more else ""
            raise TraceError(f"{len(self.items)} bad row(s):\n  " + "\n  ".join(shown) + tail)


def _csv_rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str], _Problems]]:
    problems = _Problems(path)
    try:
        handle = open(path, newline="")
    except OSError as exc:
        raise TraceError(f"{path}: cannot read: {exc.strerror}") from None
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise TraceError(f"{path}:1: missing column(s) {', '.join(missing)}; found {reader.fieldnames}")
        for row in reader:
            yield reader.line_num, row, problems
    problems.raise_if_any()


def _int(row: dict, key: str, *, low: int = 0, high: int | None = None) -> int:
    raw = (row.get(key) or "").strip()
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{key} must be an integer, got {raw!r}") from None
    if value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{key} must be {bound}, got {value}")
    return value


def _optional_int(row: dict, key: str) -> int | None:
    return _int(row, key) if (row.get(key) or "").strip() else None


def load_openb_nodes(path: str | Path | None = None) -> list[NodeInventory]:
    path = Path(path) if path else default_path("openb_node_list_gpu_node.csv")
    nodes, seen = [], set()
    for line, row, problems in _csv_rows(path, ("sn", "cpu_milli", "memory_mib", "gpu", "model")):
        try:
            name = (row["sn"] or "").strip()
            if not name or name in seen:
                raise ValueError(f"node name {name!r} is {'empty' if not name else 'a duplicate'}")
            gpus = _int(row, "gpu", high=64)
            model = (row["model"] or "").strip() or None
            if gpus and not model:
                raise ValueError(f"{gpus} GPUs without a model")
            nodes.append(sim_node(name, cpu_milli=_int(row, "cpu_milli", low=1), memory_mib=_int(row, "memory_mib"),
                                  gpus=gpus, model=model))
            seen.add(name)
        except ValueError as exc:
            problems.add(line, str(exc))
    return nodes


def load_openb_pods(path: str | Path | None = None) -> list[SimPod]:
    path = Path(path) if path else default_path("openb_pod_list_default.csv")
    pods, seen = [], set()
    # gpu_spec (absent: any GPU model), creation_time (absent: no arrivals; replay needs them, compare does not),
    # deletion_time and scheduled_time (absent: the pod runs to the end) are optional columns
    columns = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli")
    for line, row, problems in _csv_rows(path, columns):
        try:
            name = (row["name"] or "").strip()
            if not name or name in seen:
                raise ValueError(f"pod name {name!r} is {'empty' if not name else 'a duplicate'}")
            count = _int(row, "num_gpu", high=64)
            milli = _int(row, "gpu_milli", high=UNITS_PER_GPU)
            if count and not milli:
                raise ValueError(f"num_gpu {count} with gpu_milli 0")
            if not count and milli:
                raise ValueError(f"gpu_milli {milli} with num_gpu 0")
            if count > 1 and milli != UNITS_PER_GPU:
                raise ValueError(f"num_gpu {count} must take whole GPUs (gpu_milli 1000), got {milli}")
            spec = (row.get("gpu_spec") or "").strip()
            created = _int(row, "creation_time") if "creation_time" in row else None
            deleted = _optional_int(row, "deletion_time")
            started = _optional_int(row, "scheduled_time")
            begun = started if started is not None else created
            duration = None if deleted is None or begun is None else max(deleted - begun, 0)
            pods.append(SimPod(name=name, cpu_milli=_int(row, "cpu_milli"), memory_mib=_int(row, "memory_mib"),
                               gpu_count=count, gpu_milli=milli,
                               models=tuple(m for m in spec.split("|") if m) or None,
                               arrival=None if created is None else float(created),
                               duration=None if duration is None else float(duration)))
            seen.add(name)
        except ValueError as exc:
            problems.add(line, str(exc))
    return pods


def default_path(name: str) -> Path:
    """A file of the embedded default trace (``simulator/data/openb``)."""
    return Path(str(resources.files("simulator") / "data" / "openb" / name))


# ---------------------------------------------------------------------------------------------------- JSONL
_JSONL_FIELDS = {"name", "cpu_milli", "memory_mib", "gpu_count", "gpu_milli", "gpu_memory_mib", "models", "pool",
                 "arrival", "duration"}


def load_jsonl(path: str | Path) -> list[SimPod]:
    path = Path(path)
    problems = _Problems(path)
    pods, seen = [], set()
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise TraceError(f"{path}: cannot read: {exc.strerror}") from None
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            pod = _pod_from_json(json.loads(text))
            if pod.name in seen:
                raise ValueError(f"pod name {pod.name!r} is a duplicate")
            seen.add(pod.name)
            pods.append(pod)
        except json.JSONDecodeError as exc:
            problems.add(number, f"not JSON: {exc.msg} at column {exc.colno}")
        except (ValueError, TypeError) as exc:
            problems.add(number, str(exc))
    problems.raise_if_any()
    return pods


def _pod_from_json(raw: Any) -> SimPod:
    if not isinstance(raw, dict):
        raise ValueError(f"a pod must be an object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _JSONL_FIELDS)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(_JSONL_FIELDS))}")
    if not isinstance(raw.get("name"), str) or not raw["name"]:
        raise ValueError("name must be a non-empty string")

    def integer(key: str, default: int | None = 0, high: int | None = None) -> int | None:
        value = raw.get(key, default)
        if value is None and default is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0 or (high is not None and value > high):
            raise ValueError(f"{key} must be an integer in 0..{high if high is not None else 'inf'}, got {value!r}")
        return value

    def seconds(key: str, default: float | None) -> float | None:
        value = raw.get(key, default)
        if value is None:
            return None
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{key} must be a number of seconds >= 0, got {value!r}")
        return float(value)

    count, milli = integer("gpu_count", high=64), integer("gpu_milli", high=UNITS_PER_GPU)
    if bool(count) != bool(milli):
        raise ValueError(f"gpu_count {count} and gpu_milli {milli} must both be 0 or both be positive")
    models = raw.get("models")
    if models is not None and (not isinstance(models, list) or not all(isinstance(m, str) and m for m in models)):
        raise ValueError(f"models must be null or a list of model names, got {models!r}")
    pool = raw.get("pool")
    if pool is not None and not isinstance(pool, str):
        raise ValueError(f"pool must be null or a string, got {pool!r}")
    return SimPod(name=raw["name"], cpu_milli=integer("cpu_milli"), memory_mib=integer("memory_mib"),
                  gpu_count=count, gpu_milli=milli, gpu_memory_mib=integer("gpu_memory_mib", None),
                  models=tuple(models) if models else None, pool=pool or None,
                  arrival=seconds("arrival", 0.0), duration=seconds("duration", None))


def dump_jsonl(pods: Iterable[SimPod], path: str | Path) -> None:
    with open(path, "w") as out:
        for pod in pods:
            record = asdict(pod)
            record["models"] = list(pod.models) if pod.models else None
            out.write(json.dumps(record, separators=(",", ":")) + "\n")


def load_nodes(path: str | Path | None = None) -> list[NodeInventory]:
    """Nodes from a file named on the command line: ``.csv`` an openb node list, anything else a Kubernetes
    Node list; ``None`` the embedded GPU nodes."""
    if path is None or str(path).endswith(".csv"):
        return load_openb_nodes(path)
    return load_cluster_file(path)


def load_pods(path: str | Path | None = None) -> list[SimPod]:
    """Pods from a file named on the command line: ``.jsonl`` our JSONL, anything else an openb pod CSV;
    ``None`` the embedded default trace."""
    if path is not None and str(path).endswith(".jsonl"):
        return load_jsonl(path)
    return load_openb_pods(path)


# ---------------------------------------------------------------------------------------------------- clusters
def node_objects(nodes: Iterable[NodeInventory]) -> dict:
    """A Kubernetes ``v1`` List of Nodes that :func:`load_cluster_file` (and the extender's static mode) reads."""
    items = []
    for node in nodes:
        allocatable = {"cpu": f"{node.cpu_milli}m", "memory": f"{node.memory_mib}Mi"}
        metadata: dict[str, Any] = {"name": node.name, "labels": {}, "annotations": {}}
        if node.pool:
            metadata["labels"][POOL_LABEL] = node.pool
        if node.gpus:
            metadata["annotations"][GPUS_ANNOTATION] = inventory_annotation(
                units_per_gpu=UNITS_PER_GPU,
                gpus=[{"index": g.index, "uuid": g.uuid, "model": g.model, "memoryMiB": g.memory_mib}
                      for g in node.gpus])
        items.append({"apiVersion": "v1", "kind": "Node", "metadata": metadata,
                      "status": {"capacity": allocatable, "allocatable": allocatable}})
    return {"apiVersion": "v1", "kind": "List", "items": items}


def load_cluster_file(path: str | Path) -> list[NodeInventory]:
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise TraceError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise TraceError(f"{path}: not YAML or JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("items"), list):
        raise TraceError(f"{path}: expected a Kubernetes List with items (kubectl get nodes -o yaml)")
    problems = _Problems(path)
    nodes = []
    for number, item in enumerate(document["items"], start=1):
        where = f"item {number}"
        try:
            if not isinstance(item, dict) or item.get("kind", "Node") != "Node":
                raise ValueError("not a Node")
            inventory = parse_node(item, SETTINGS)
            allocatable = (item.get("status") or {}).get("allocatable") or {}
            cpu = _quantity(allocatable.get("cpu"), _milli)
            memory = _quantity(allocatable.get("memory"), lambda q: parse_integer_quantity(q) // (1024 * 1024))
            name = item["metadata"]["name"]
            if inventory is None:
                inventory = NodeInventory(name=name, pool=None, gpus=(), links=None, source="simulator")
            nodes.append(NodeInventory(name=inventory.name, pool=inventory.pool, gpus=inventory.gpus,
                                       links=inventory.links, source="simulator", cpu_milli=cpu, memory_mib=memory))
        except (CorruptAnnotation, ValueError, TypeError, KeyError) as exc:
            problems.items.append(f"{path}: {where}: {exc}")
    problems.raise_if_any()
    return nodes


def _quantity(raw: Any, parse: Callable[[str], int]) -> int | None:
    if raw is None:
        return None
    try:
        return parse(str(raw))
    except (ValueError, ArithmeticError) as exc:
        raise ValueError(f"bad quantity {raw!r}: {exc}") from None


def _milli(raw: str) -> int:
    """CPU quantity to milli-cores: "8" -> 8000, "500m" -> 500, "1.5" -> 1500."""
    value = parse_quantity(raw) * 1000
    if value < 0 or value != value.to_integral_value():
        raise ValueError("not a whole number of milli-cores")
    return int(value)
