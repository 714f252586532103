"""A node's learning, apart from any transport: :class:`NodeCore` and its parts.

:mod:`streamlearn.kafka.node` feeds it from Kafka; nothing here imports kafka.
"""

from streamlearn.node.buffer import SampleBuffer
from streamlearn.node.core import NodeCore, Outgoing, SyncOutcome
from streamlearn.node.guard import GuardWindow

__all__ = ["NodeCore", "Outgoing", "SyncOutcome", "GuardWindow", "SampleBuffer"]
