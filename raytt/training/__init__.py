"""Training on Ray: the driver that assembles a `TorchTrainer`, and the loop every worker runs.

`driver` checks the data, joins Ray and builds the trainer; `worker` is the loop each Ray Train
worker runs, `step` one optimizer step read top to bottom, `setup` the model and optimizer, `data`
the batches, `negatives` the same-article ones, `validation` the full-bank check each epoch,
`recorder` the rows, reports and checkpoints, `position` where a worker stands, `faults` the test hooks.
Import the submodules: this package imports nothing, so Ray actors that only need configs stay light.
"""
