"""Ingestion: the one record schema, the ingest API, its tokens, and the batching client."""
