"""The knowledge index (written by ingest/, read by the server), retrieval over it, and its evaluation."""
