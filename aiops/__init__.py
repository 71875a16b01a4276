"""aiops: streaming incident detection for on-call teams.

The package follows the data flow: ``sources -> decode -> detect / logs -> correlate ->
decide -> notify / act``, with ``state`` (checkpoints), ``runtime`` (event time) and
``config`` at the edges. Records passed between stages are defined in :mod:`aiops.records`.
"""

__version__ = "0.1.0"
