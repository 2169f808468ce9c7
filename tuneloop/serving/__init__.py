"""Serving what the registry promotes (issue 19): one thread owns each base model, the LoRA versions
being served are attached to it by name, and requests that arrive together are generated together.

It sits above the pipelines and below the CLI (core <- store <- registry <- monitors <- pipelines <-
serving <- CLI): it reads the registry, writes production records, and is started by `tuneloop serve`.
"""
