# Two set-up commands: `make demo` and `make test`. Both create .venv and install the project with its test
# extras on first use; a stamp file re-installs only when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench lint clean deploy

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The FGD paper's six policies x 10 seeds on the embedded openb trace, on every core (a few minutes): prints
# the table and writes sim-results/ (results.csv, curves.csv, report.md, plots).
demo: $(STAMP)
	$(VENV)/bin/fracgpu-sim compare --out sim-results

# The end-to-end tests need kube-apiserver, kube-scheduler, kubelet and etcd built from pinned upstream sources
# (Go), built once into .cache/ (about 6 minutes cold, under a second once built), and, for the real node,
# containerd, runc and busybox-static from Debian's packages (installed once, as root); the chart's tests need helm
# v3, built the same way into .cache/helm/ (about 2 minutes cold). A failure does not stop make here: the
# fixtures retry and, under CI=true, fail with the tool's own error.
test: $(STAMP)
	$(VENV)/bin/lint-imports
	-$(PY) testbed/build_control_plane.py
	-$(PY) -m testbed.build_helm
	-$(PY) -m testbed.node install
	$(PY) -m pytest $(PYTEST_ARGS)

# deploy/*.yaml are the Helm chart deploy/helm/fracgpu rendered (its defaults, mps.enabled=true): after changing
# the chart, regenerate them (tests/test_helm.py fails while they differ).
deploy: $(STAMP)
	$(PY) -m testbed.render_deploy

bench: $(STAMP)
	$(PY) benchmarks/bench_filter.py
	$(PY) benchmarks/bench_http.py
	$(PY) benchmarks/bench_e2e.py
	$(PY) benchmarks/bench_sim.py
	$(PY) benchmarks/bench_sim_floor.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis .cache
