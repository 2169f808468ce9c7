"""`python -m tuneloop ...` runs the CLI (used by `tuneloop up` to start the ingest API)."""

from tuneloop.cli.main import entrypoint

entrypoint()
