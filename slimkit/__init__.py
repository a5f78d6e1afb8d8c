"""slimkit: prune and distill trained PyTorch models, then report what was really gained.

The pipeline is data -> measure (profile) -> prune -> distill -> measure (evaluate) -> io (export);
each stage is a subpackage with a small public surface.
"""

from slimkit.errors import SlimkitError
from slimkit.version import __version__
__all__ = ["SlimkitError", "__version__", "compress"]


def __getattr__(name: str):
    """`slimkit.compress` on first use, so `import slimkit` stays light (no torch import)."""
    if name == "compress":
        from slimkit.compression.run import compress

        return compress
    raise AttributeError(f"module 'slimkit' has no attribute {name!r}")
