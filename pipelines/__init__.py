"""pipelines: curation, synthetic data, training, evaluation, retraining and the scheduler.

May import the core (`tuneloop`), `registry` and `monitors`. Filled by issues 3, 4, 6 and 7.
"""
