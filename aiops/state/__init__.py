"""Checkpoints of pipeline state: a versioned envelope and interchangeable backends.

``FileCheckpointStore`` (a state directory) and ``MemoryCheckpointStore`` implement the same
:class:`CheckpointStore` protocol; ``KafkaChangelogStore`` (a compacted topic keyed by partition
and state key, so a partition's new owner can restore it) is its asyncio counterpart.
:mod:`aiops.state.pipeline_state` turns a whole :class:`~aiops.runtime.pipeline.Pipeline` into
one snapshot and back.
"""

from aiops.state.base import CheckpointStore, Offsets
from aiops.state.envelope import Checkpoint, CheckpointError
from aiops.state.file import FileCheckpointStore
from aiops.state.kafka import KafkaChangelogStore
from aiops.state.memory import MemoryCheckpointStore

__all__ = ["Checkpoint", "CheckpointError", "CheckpointStore", "FileCheckpointStore", "KafkaChangelogStore",
           "MemoryCheckpointStore", "Offsets"]
