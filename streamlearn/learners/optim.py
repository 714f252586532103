"""Plain SGD without ``torch.optim``: the first torch optimizer a process builds imports ``torch._dynamo``
(about 0.7 s on CPU, most of a node's or ``simulate``'s start), and plain SGD needs none of it.

:class:`PlainSGD` steps as ``torch.optim.SGD`` with ``momentum=0`` does on CPU (``w += -lr (g + wd w)``,
the same tensor calls) and has the parts of its interface the package uses: ``param_groups`` (a caller
may set ``lr``), ``state`` (always empty), ``step``, ``zero_grad``, ``state_dict``/``load_state_dict``
in torch's format.

Examples
--------
>>> import torch
>>> w = torch.tensor([1.0, 2.0], requires_grad=True)
>>> opt = PlainSGD([w], lr=0.5)
>>> w.grad = torch.tensor([1.0, -1.0])
>>> opt.step()
>>> w.tolist(), opt.state_dict()["param_groups"][0]["lr"]
([0.5, 2.5], 0.5)
"""

from __future__ import annotations

import torch

__all__ = ["PlainSGD", "make_optimizer"]


class PlainSGD:
    """``torch.optim.SGD(params, lr, weight_decay=weight_decay)`` (no momentum), without torch.optim."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0):
        group = {"params": list(params), "lr": float(lr), "momentum": 0, "dampening": 0,
                 "weight_decay": float(weight_decay), "nesterov": False, "maximize": False}
        self.param_groups = [group]
        self.state: dict = {}  # plain SGD keeps nothing between steps

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad if not wd else p.grad.add(p, alpha=wd)
                p.add_(grad, alpha=-lr)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.zero_()

    def state_dict(self) -> dict:
        """As ``torch.optim.SGD.state_dict()``: no state, the groups with parameters as indices."""
        groups, k = [], 0
        for group in self.param_groups:
            n = len(group["params"])
            groups.append({**{key: v for key, v in group.items() if key != "params"}, "params": list(range(k, k + n))})
            k += n
        return {"state": {}, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("state"):
            raise ValueError(f"plain SGD keeps no state, got state for parameters {sorted(state_dict['state'])}")
        for group, saved in zip(self.param_groups, state_dict["param_groups"]):
            group["lr"], group["weight_decay"] = float(saved["lr"]), float(saved["weight_decay"])


def make_optimizer(params, optimizer: str, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
    """``optimizer`` (``"sgd"`` or ``"adam"``) over ``params``: :class:`PlainSGD` for SGD without momentum,
    else the torch optimizer."""
    if optimizer == "sgd" and not momentum:
        return PlainSGD(params, lr=lr, weight_decay=weight_decay)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
