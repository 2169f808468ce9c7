"""tuneloop's storage layer: the engine, the tables, the migrations, named locks and leases.

It sits between the core and the registry (core <- store <- registry <- monitors <- pipelines) and
imports nothing of ours above the core.
"""
