"""Small networks written as pure functions of one flat parameter vector.

A :class:`Net` knows the layout of its parameters inside the flat vector ``w`` (weights then
bias, layer by layer) and computes ``forward(w, X) -> logits`` from views into ``w``. Nothing
lives outside ``w``, so ``torch.func.vmap(net.forward)(W[m, d], X[m, B, f])`` runs m models at
once, and averaging models is averaging vectors.

Architectures
-------------
``logreg``
    One linear layer, f → k logits.
``mlp``
    Linear layers f → hidden[0] → ... → k, ReLU between them.
``cnn``
    The f features as a 1-channel sequence; per ``hidden`` entry a 1-D convolution (that many
    channels, ``kernel_size``, "same" padding) and ReLU; then a linear layer to k logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from streamlearn.errors import ConfigError

__all__ = ["ARCHITECTURES", "Net", "build_net"]

ARCHITECTURES = ("logreg", "mlp", "cnn")


@dataclass(frozen=True)
class Param:
    name: str
    shape: tuple[int, ...]
    fan_in: int

    @property
    def size(self) -> int:
        return math.prod(self.shape)


class Net:
    """Parameter layout + pure forward function of one architecture.

    Examples
    --------
    >>> import torch
    >>> net = build_net("mlp", n_features=3, n_classes=2, hidden=(4,))
    >>> net.d  # 3*4 + 4 + 4*2 + 2
    26
    >>> w = net.init(torch.Generator().manual_seed(0))
    >>> net.forward(w, torch.zeros(5, 3)).shape
    torch.Size([5, 2])
    """

    def __init__(self, arch: str, params: list[Param], kernel_size: int = 3):
        self.arch = arch
        self.params = tuple(params)
        self.kernel_size = kernel_size
        self._sizes = [p.size for p in self.params]
        self.d = sum(self._sizes)

    def views(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """The parameters as named views into ``w`` (no copies)."""
        return {p.name: t for p, t in zip(self.params, self._unflatten(w))}

    def _unflatten(self, w: torch.Tensor) -> list[torch.Tensor]:
        # One split (a single autograd node) rather than a slice per parameter.
        return [t.view(p.shape) for p, t in zip(self.params, torch.split(w, self._sizes))]

    def init(self, generator: torch.Generator) -> torch.Tensor:
        """Initial flat vector (float32, cpu): every entry U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
        PyTorch's default for linear and conv layers, drawn from ``generator`` in layout order."""
        parts = []
        for p in self.params:
            bound = 1.0 / math.sqrt(p.fan_in)
            parts.append((torch.rand(p.size, generator=generator, dtype=torch.float32) * 2 - 1) * bound)
        return torch.cat(parts)

    def forward(self, w: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """Logits (B, k) of the model ``w`` (d,) on ``X`` (B, f). Pure: reads nothing but its arguments.

        Also batched over models: ``w`` (m, d) and ``X`` (m, B, f) give (m, B, k), one batched
        matmul per layer for logreg and mlp (vmap over a flat-vector forward costs several times
        more per step), vmap for the cnn.
        """
        if w.dim() == 2:
            if self.arch == "cnn":
                return torch.func.vmap(self._forward_one)(w, X)
            m = w.shape[0]
            ps = [t.reshape(m, *p.shape) for p, t in zip(self.params, torch.split(w, self._sizes, dim=1))]
            h = X
            for i in range(0, len(ps), 2):
                if i:
                    h = F.relu(h)
                h = torch.baddbmm(ps[i + 1].unsqueeze(1), h, ps[i].transpose(1, 2))
            return h
        return self._forward_one(w, X)

    def _forward_one(self, w: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        ps = self._unflatten(w)
        if self.arch == "cnn":
            h = X.unsqueeze(-2)  # (B, 1, f): one input channel
            for i in range(0, len(ps) - 2, 2):
                h = F.relu(_conv1d_same(h, ps[i], ps[i + 1]))
            return F.linear(h.flatten(-2), ps[-2], ps[-1])
        h = X
        for i in range(0, len(ps), 2):
            if i:
                h = F.relu(h)
            h = F.linear(h, ps[i], ps[i + 1])
        return h


def _conv1d_same(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``F.conv1d(h, weight, bias, padding=k // 2)`` as unfold + einsum: on tiny inputs the
    backward pass is ~10x faster than the conv kernel on CPU, and it batches under vmap."""
    p = weight.shape[-1] // 2
    cols = F.pad(h, (p, p)).unfold(-1, weight.shape[-1], 1)  # (B, C_in, f, k)
    return torch.einsum("bcfk,ock->bof", cols, weight) + bias.unsqueeze(-1)


def build_net(arch: str, n_features: int, n_classes: int, hidden=(32,), kernel_size: int = 3) -> Net:
    """The :class:`Net` of ``arch`` for f features and k classes (``hidden`` is ignored by logreg)."""
    if arch not in ARCHITECTURES:
        raise ConfigError(f"arch: one of {ARCHITECTURES}, got {arch!r}")
    hidden = tuple(hidden or ())
    if any(not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in hidden):
        raise ConfigError(f"hidden: need positive ints, got {hidden!r}")
    f, k = n_features, n_classes
    params: list[Param] = []

    def linear(name, n_in, n_out):
        params.append(Param(f"{name}.weight", (n_out, n_in), n_in))
        params.append(Param(f"{name}.bias", (n_out,), n_in))

    if arch == "logreg":
        linear("linear", f, k)
    elif arch == "mlp":
        if not hidden:
            raise ConfigError("hidden: an mlp needs at least one hidden layer")
        sizes = (f, *hidden, k)
        for i in range(len(sizes) - 1):
            linear(f"layer{i}", sizes[i], sizes[i + 1])
    else:
        if not hidden:
            raise ConfigError("hidden: a cnn needs at least one conv layer (channels)")
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size: need an odd positive int, got {kernel_size!r}")
        c_in = 1
        for i, c in enumerate(hidden):
            fan_in = c_in * kernel_size
            params.append(Param(f"conv{i}.weight", (c, c_in, kernel_size), fan_in))
            params.append(Param(f"conv{i}.bias", (c,), fan_in))
            c_in = c
        linear("head", c_in * f, k)
    return Net(arch, params, kernel_size)
