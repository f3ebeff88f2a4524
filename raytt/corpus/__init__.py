"""Real corpora: documents -> ordered chunks -> vectors, written as a bank (`raytt ingest`).

`extract` turns a file into paragraphs, `chunk` packs sentences into chunks, `embed` loads a
sentence-transformers model as a Ray Data actor, and `ingest` runs the pipeline with resumable shards.
"""
