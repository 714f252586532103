"""streamlearn.sync: protocols (pure state machines) that decide who syncs, and the model bank.

The vectorized simulator and the Kafka sync service drive the same protocol objects.
"""

from streamlearn.sync.aggregate import sq_dist, weighted_mean
from streamlearn.sync.bank import ModelBank
from streamlearn.sync.dynamic import Dynamic
from streamlearn.sync.fedavg import FedAvg
from streamlearn.sync.hierarchy import Hierarchy
from streamlearn.sync.lsgd import LSGD
from streamlearn.sync.messages import Action, CommStats, PullToward, Report, RequestModels, SendModel
from streamlearn.sync.nosync import NoSync
from streamlearn.sync.periodic import Continuous, Periodic
from streamlearn.sync.protocol import Protocol
from streamlearn.sync.spec import PROTOCOLS, make_protocol, parse_spec

__all__ = [
    "Protocol", "NoSync", "Continuous", "Periodic", "FedAvg", "Dynamic", "LSGD",
    "Report", "RequestModels", "SendModel", "PullToward", "Action", "CommStats",
    "ModelBank", "weighted_mean", "sq_dist", "Hierarchy",
    "PROTOCOLS", "make_protocol", "parse_spec",
]
