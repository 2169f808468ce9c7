"""tuneloop: fine-tune, evaluate, promote and monitor LLMs around MLflow.

This package holds the core (settings, errors, shared names and schemas), which imports nothing
else of ours, and the CLI, which imports everything lazily.
"""

__version__ = "0.1.0"
