"""Shared test setup: headless matplotlib, torch threads from LOSSREDUCE_THREADS, hypothesis without timing checks."""

import matplotlib

matplotlib.use("Agg")  # in this process only: kernels started by notebook tests keep their inline backend

from hypothesis import HealthCheck, settings  # noqa: E402

from lossreduce_demo.config import set_torch_threads  # noqa: E402

set_torch_threads()

# Timing varies on shared CI machines (and under pytest-xdist); property tests check maths, not speed.
settings.register_profile("lossreduce", deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("lossreduce")
