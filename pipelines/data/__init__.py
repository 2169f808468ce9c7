"""Data: training row formats, cleaning, synthetic rows, human review."""
