"""raytt: distributed training of two-tower retrievers on Ray.

The subcommands of the `raytt` CLI are importable functions: `synth`, `build`, `import_vectors`,
`inspect`, `demo` (see `raytt.commands`).
"""

from raytt.commands import build, demo, import_vectors, inspect, synth

__all__ = ["build", "demo", "import_vectors", "inspect", "synth"]
__version__ = "0.1.0"
