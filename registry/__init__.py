"""The model registry: base models, adapters, lineage, aliases, gated promotion and audit.

Built on MLflow's registry; tuneloop's own tables (audit, locks) live in `tuneloop.store`.
Import submodules directly; this package imports nothing heavy.
"""
