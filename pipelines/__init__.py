"""pipelines: see README; filled by later issues."""
