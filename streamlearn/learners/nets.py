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

    @property
    def closed_form(self) -> bool:
        """Whether :meth:`cross_entropy_grad` can give this net's gradient (logreg, mlp)."""
        return self.arch in ("logreg", "mlp")

    def cross_entropy_grad(self, W: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> tuple:
        """``(logits, G)`` of m models at once, without autograd: the logits (m, B, k) of ``W`` (m, d) on
        ``X`` (m, B, f), as :meth:`forward` computes them, and G (m, d), row i the gradient of row i's
        mean cross-entropy on its B samples of class indices ``y`` (m, B).

        The backward pass written out (one batched matmul per layer and parameter): autograd's graph
        bookkeeping costs more than the arithmetic for models this small (measured: bench/sim_speed.py).

        >>> net = build_net("mlp", n_features=3, n_classes=2, hidden=(4,))
        >>> W = torch.stack([net.init(torch.Generator().manual_seed(s)) for s in range(2)]).requires_grad_(True)
        >>> X, y = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([[0, 1, 1, 0, 1]] * 2)
        >>> F.cross_entropy(net.forward(W, X).reshape(-1, 2), y.reshape(-1), reduction="sum").div(5).backward()
        >>> torch.allclose(net.cross_entropy_grad(W.detach(), X, y)[1], W.grad, atol=1e-6)
        True
        """
        m, B = X.shape[0], X.shape[1]
        ps = [t.reshape(m, *p.shape) for p, t in zip(self.params, torch.split(W, self._sizes, dim=1))]
        hs, zs = [X], []  # each layer's input, and the pre-activations of the hidden layers
        for i in range(0, len(ps), 2):
            if i:
                zs.append(hs[-1])
                hs[-1] = F.relu(hs[-1])
            hs.append(torch.baddbmm(ps[i + 1].unsqueeze(1), hs[-1], ps[i].transpose(1, 2)))
        logits = hs.pop()
        # softmax by hand: torch.softmax over a last dimension of 2-3 classes is 3x slower on CPU
        dz = (logits - logits.amax(dim=-1, keepdim=True)).exp_()
        dz.div_(dz.sum(dim=-1, keepdim=True))
        dz.scatter_add_(-1, y.unsqueeze(-1), torch.full(y.shape + (1,), -1.0, dtype=dz.dtype, device=dz.device))
        dz.div_(B)  # d(mean loss)/d logits
        grads = []
        for i in range(len(ps) - 2, -1, -2):
            h = hs[i // 2]
            grads.append(dz.sum(1))  # bias
            grads.append(torch.bmm(dz.transpose(1, 2), h).reshape(m, -1))  # weight (out, in)
            if i:
                dz = torch.bmm(dz, ps[i]).mul_(zs[i // 2 - 1] > 0)
        return logits, torch.cat(grads[::-1], dim=1)

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
