"""Training data: reading corpora (JSONL, benchmark directories), dictionaries, shards, batches.

loading         load_corpus: any corpus into memory (the entry point)
jsonl           the one JSONL reader (records, fields, languages, tokens)
corpus_rules    languages, labels, split and hold-out, corpus.info: shared by both JSONL builders
vocab_rules     the vocabulary rule, preprocessing checks, bags of words: shared likewise
benchmark       benchmark directories in the InfoCTM layout
dictionary      bilingual dictionaries and the vocabulary links they give
sharding        out of core: build_shards / open_or_build_shards, ShardedCorpus
shard_format    the shard directory's files (shards, index.json, word counts)
spill           the preprocessor's pass-1 spill on disk
batches         the BatchSource interface and InMemoryBatches; shard_batches: ShardedBatches
stopwords       built-in stopword lists
"""
