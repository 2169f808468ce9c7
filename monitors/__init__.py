"""monitors: measurement. Metrics, text descriptors, drift tests, ingestion, windows, alert rules.

May import the core (`tuneloop`) and `registry`; never `pipelines`. Monitors raise events and
pipelines subscribe. Filled by the evaluation (4) and monitoring (5) issues.
"""
