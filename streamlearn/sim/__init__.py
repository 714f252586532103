"""streamlearn.sim: all nodes in one process, vectorised — the research harness."""

from streamlearn.sim.compare import expand_grid, matched_accuracy, recovery_after_drifts
from streamlearn.sim.run import build_node_data, run_comparison, simulate_once
from streamlearn.sim.simulator import NodeData, SimResult, load_node_data, simulate

__all__ = [
    "NodeData", "SimResult", "load_node_data", "simulate", "build_node_data", "simulate_once", "run_comparison",
    "expand_grid", "matched_accuracy", "recovery_after_drifts",
]
