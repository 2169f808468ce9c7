"""Data cleaning for `tuneloop data curate`: text normalisation, PII scrubbing, exact and near dedup, splits."""
