"""fracgpu extender: the placement core and the layers (API, Kubernetes, node agent) built on it."""
