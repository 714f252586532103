"""Sources and drift injectors: seeded, replayable streams of ``(x, y)`` with ground-truth drift events.

>>> from streamlearn.streams import make_source, inject
>>> s = inject(make_source("sea", seed=0), ["sudden@500"])
>>> X, y = s.to_arrays(1000)
>>> X.shape, [e.to_dict() for e in s.drift_events(1000)]
((1000, 3), [{'position': 500, 'node': 0, 'kind': 'sudden', 'params': {}}])
"""

from streamlearn.streams.arrays import ArrayStream
from streamlearn.streams.base import BLOCK, DriftEvent, Stream
from streamlearn.streams.csv_source import ELEC2_PATH, CSVSource, Elec2
from streamlearn.streams.drift_spec import DRIFT_KINDS, DriftSpec, parse_drift
from streamlearn.streams.generators import AgrawalStream, HyperplaneStream, RBFStream, SEAStream, STAGGERStream
from streamlearn.streams.injectors import inject
from streamlearn.streams.nodes import node_streams, parse_schedule, parse_split
from streamlearn.streams.registry import SOURCES, make_source
from streamlearn.streams.split import Split, SplitNode

__all__ = [
    "DriftEvent", "Stream", "DriftSpec", "BLOCK",
    "make_source", "SOURCES", "DRIFT_KINDS", "parse_drift", "inject", "node_streams",
    "parse_schedule", "parse_split", "Split", "SplitNode",
    "SEAStream", "HyperplaneStream", "RBFStream", "AgrawalStream", "STAGGERStream", "CSVSource", "Elec2",
    "ArrayStream",
    "ELEC2_PATH",
]
