"""fracgpu simulator: replays workloads through extender.core, the same placement code the extender runs."""
