"""Losses, one idea per file, all computed in the space retrieval uses (query tower vs doc tower output).

`objective` picks one by config: `infonce`, `triplet`, or `ar_mix` (lambda_con * InfoNCE +
(1 - lambda_con) * (1 - cos(q, target))).
"""
