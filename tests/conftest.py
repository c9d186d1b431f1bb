"""Hypothesis profiles: 'ci' runs thousands of stateful steps within a bounded time; 'dev' is quicker."""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=150, stateful_step_count=40, deadline=None, derandomize=False,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=40, stateful_step_count=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=1000, stateful_step_count=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])  # long local runs (test_fuzz: 10,000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
