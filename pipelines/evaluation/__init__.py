"""Evaluation: suites of tasks run against registered versions, scored with `monitors.metrics`."""
