"""raytt: distributed training of two-tower retrievers on Ray.

The subcommands of the `raytt` CLI are importable functions: `synth`, `ingest`, `build`,
`import_vectors`, `inspect`, `train`, `evaluate`, `compare`, `demo` (see `raytt.commands`).
"""

from raytt.commands import build, compare, demo, evaluate, import_vectors, ingest, inspect, synth, train

__all__ = ["build", "compare", "demo", "evaluate", "import_vectors", "ingest", "inspect", "synth", "train"]
__version__ = "0.1.0"
