"""raytt: distributed training of two-tower retrievers on Ray.

The subcommands of the `raytt` CLI are importable functions: `synth`, `ingest`, `build`,
`import_vectors`, `import_bank`, `inspect`, `train`, `evaluate`, `compare`, `demo` (see `raytt.commands`, which
also holds `export`, `search`, `serve` and `rollout`: `raytt.export` and `raytt.rollout` are modules), and
`raytt.Retriever` searches an export. They are loaded on first use, so Ray actors and
workers that import a submodule do not import the CLI layer.
"""

__all__ = [
    "Retriever",
    "build",
    "compare",
    "demo",
    "evaluate",
    "import_bank",
    "import_vectors",
    "ingest",
    "inspect",
    "synth",
    "train",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "Retriever":
        from raytt.retriever import Retriever

        return Retriever
    if name in __all__:
        from raytt import commands

        return getattr(commands, name)
    raise AttributeError(f"module 'raytt' has no attribute {name!r}")
