"""The largest values fracgpu accepts from any object or request, each refused with a message naming it.

Kubernetes holds integers as int64 and Go's JSON decoder refuses more, and the ledger keeps its counters in
int64 numpy arrays: every integer read from the API (quantities, annotations, labels) must fit in one. Beyond
that, the bounds are what a real GPU node can hold, with room to spare, so that one object cannot make the
extender allocate or compute without bound.
"""

MAX_INT64 = 2**63 - 1
MAX_GPUS_PER_NODE = 64  # the largest NVLink nodes today hold 8 to 16 GPUs
MAX_GPU_MEMORY_MIB = 2**24  # 16 TiB of memory on one GPU (an H200 has 141 GB)
MAX_UNITS_PER_GPU = 10**6
MAX_NUMA_NODE = 1023
MAX_GPU_INDEX = 1023  # NVML's index of a GPU on its node
MAX_GPU_CONTAINERS_PER_POD = 16  # containers of one pod that ask for GPUs (init containers and sidecars too)
MAX_CANDIDATES = 100_000  # nodes named in one request; the largest clusters run have about 65,000
MAX_VICTIMS = 10_000  # victim pods proposed for one node; kubelet runs at most a few hundred pods a node
MAX_PARSED_PODS = 100_000  # pods whose parse is kept by UID for Bind (each for at most the pod_cache_seconds setting)
