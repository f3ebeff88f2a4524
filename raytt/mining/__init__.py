"""Hard-negative mining: a pool of FAISS/torch miner actors serving negatives asynchronously.

`schedule` parses the curriculum, `index` builds what a miner searches, `select` turns neighbours
into negatives through the false-negative filters, `pool` holds the actors (created by the driver),
and `client` is the training worker's side: submit ahead, wait with a timeout, fall back to
in-batch negatives on any failure, count everything.
"""
