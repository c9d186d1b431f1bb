"""`make demo` runs and shows every policy, the per-GPU table and why pending pods wait."""

from extender.core.policies import POLICIES
from simulator import demo
from simulator.synthetic import synthetic_workload


def test_demo_prints_every_policy_and_the_gpu_table(capsys):
    demo.main(["--pods", "60", "--seed", "7"])
    out = capsys.readouterr().out
    for name in POLICIES:
        assert f"\n{name}" in out or f"\n{name}(" in out
    assert "per GPU under binpack" in out and "team-a-0" in out
    assert "pending under binpack; why the first three wait" in out and "fracgpu:" in out


def test_synthetic_workload_is_seeded():
    assert synthetic_workload(30, seed=3) == synthetic_workload(30, seed=3)
    assert synthetic_workload(30, seed=3) != synthetic_workload(30, seed=4)
