"""Drift statistics: descriptors, domain classifier, quality and embedding checks, and judging a window against a reference."""
