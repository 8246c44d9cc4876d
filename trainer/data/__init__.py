"""Training data: reading corpora (JSONL, benchmark directories), dictionaries, shards, batches."""
