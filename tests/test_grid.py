"""``fracgpu-sim grid``: policies × seeds over several traces, locally and on a dask.distributed cluster."""

import csv
import shutil

import pytest

from simulator import cli
from simulator.compare import Settings, run_one
from simulator.grid import find_traces, run_grid
from simulator.policy_specs import resolve
from simulator.trace import TraceError
from test_simulator_experiments import write_openb


@pytest.fixture()
def data(tmp_path):
    """A folder of three openb pod lists, one in the multigpu form (five columns), and a small node list."""
    nodes, pods = write_openb(tmp_path, nodes=8, pods=80)
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(pods, folder / "openb_pod_list_default.csv")
    _, other = write_openb(tmp_path, nodes=8, pods=80, seed=1)
    shutil.copy(other, folder / "openb_pod_list_gpushare100.csv")
    with open(other) as f, open(folder / "openb_pod_list_gpushare40.csv", "w", newline="") as out:
        writer = csv.writer(out)
        for row in csv.reader(f):
            writer.writerow(row[:5])  # name, cpu_milli, memory_mib, num_gpu, gpu_milli
    (folder / "notes.txt").write_text("not a trace")
    return nodes, folder


def test_traces_are_found_by_name_or_all_in_natural_order(data):
    _, folder = data
    assert [t.name for t in find_traces("all", str(folder))] == ["default", "gpushare40", "gpushare100"]
    assert [t.path for t in find_traces("gpushare40", str(folder))] == [str(folder / "openb_pod_list_gpushare40.csv")]
    assert find_traces("default", None)[0].path is None  # the embedded trace
    with pytest.raises(TraceError, match="trace 'multigpu20': found neither openb_pod_list_multigpu20.csv in"):
        find_traces("default,multigpu20", str(folder))
    with pytest.raises(TraceError, match="names a trace twice"):
        find_traces("default,default", str(folder))


def test_each_cell_is_the_run_compare_makes(data):
    nodes, folder = data
    traces = find_traces("all", str(folder))
    settings = Settings(nodes=str(nodes))
    cells = run_grid(traces, ["best-fit", "fgd"], [42, 43], settings, jobs=1, progress=False)
    assert [(c.trace, c.policy, c.seed) for c in cells] == [
        (t, p, s) for t in ("default", "gpushare40", "gpushare100") for p in ("best-fit", "fgd") for s in (42, 43)]
    for cell in cells[::5]:
        trace = next(t for t in traces if t.name == cell.trace)
        alone = run_one(resolve(cell.policy), cell.seed, Settings(nodes=str(nodes), pods=trace.path))
        assert cell.unallocated == alone.unallocated_at_100 and cell.placed == alone.placed
    assert run_grid(traces, ["best-fit", "fgd"], [42, 43], settings, jobs=2, progress=False) == cells


def test_the_grid_on_a_dask_cluster_gives_the_local_numbers_bit_for_bit(data):
    from distributed import LocalCluster

    nodes, folder = data
    traces = find_traces("all", str(folder))
    settings = Settings(nodes=str(nodes))
    local = run_grid(traces, ["random", "fgd"], [42, 43], settings, jobs=1, progress=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster:
        remote = run_grid(traces, ["random", "fgd"], [42, 43], settings, scheduler=cluster.scheduler_address,
                          progress=False)
    assert remote == local


def test_the_command_writes_the_table_with_the_papers_figures(data, tmp_path, capsys):
    nodes, folder = data
    out = tmp_path / "grid"
    assert cli.main(["grid", "--data", str(folder), "--nodes", str(nodes), "--policies", "best-fit,fgd",
                     "--seeds", "42,43", "--jobs", "2", "--out", str(out), "--quiet"]) == 0
    rows = list(csv.DictReader(open(out / "grid.csv")))
    assert len(rows) == 3 * 2 * 2 and all(0 <= float(r["unallocated_at_100_pct"]) <= 100 for r in rows)
    report = (out / "report.md").read_text()
    # the paper's figures beside ours for the traces it ran (default: best-fit 7.14, fgd 4.77; gpushare40:
    # best-fit 8.56, fgd 6.04) and none for ours that it did not
    default = next(line for line in report.splitlines() if line.startswith("| default |"))
    assert "(paper 7.14)" in default and "(paper 4.77)" in default
    assert "(paper 8.56)" in next(line for line in report.splitlines() if line.startswith("| gpushare40 |"))
    assert "12 runs in" in report and (out / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "gpushare100" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--traces", "nope"], "trace 'nope': found neither"),
    (["--policies", "fgd,unknown"], "unknown policy 'unknown'"),
    (["--scheduler", "tcp://127.0.0.1:9"], "--scheduler tcp://127.0.0.1:9: cannot reach a dask scheduler"),
])
def test_bad_grid_arguments_are_named_with_exit_status_2(argv, message, data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("simulator.grid.CONNECT_TIMEOUT_S", 2)
    nodes, folder = data
    assert cli.main(["grid", "--data", str(folder), "--nodes", str(nodes), "--seeds", "42", "--quiet",
                     "--out", str(tmp_path / "g"), *argv]) == 2
    assert message in capsys.readouterr().err
