"""The root of a sharded sync layer run as separate services: the shards' references in, an average out.

:class:`~streamlearn.sync.hierarchy.Hierarchy` runs every shard and the root in one object (the
simulator). When each shard has a sync service of its own, the shards tell the root about each full
sync (their reference, their alive nodes and how many full syncs they made) and the root answers with
the average; this module is that exchange without the transport:

- :class:`RootAverager` (the root): the latest reference and alive count of every shard; once the
  shards together made ``root * shards`` full syncs since the last average, the node-weighted average
  of the latest references (:func:`~streamlearn.sync.hierarchy.root_average`), the rule of
  :class:`~streamlearn.sync.hierarchy.Hierarchy`.
- :func:`~streamlearn.sync.hierarchy.adopt_root` (a shard): the average becomes the shard's reference and goes to every alive
  node of the shard as a full sync (model and reference), counted as models down.

One difference from the one-object hierarchy: there the root waits until no shard awaits a model; here
a shard that is in the middle of a sync adopts the average once that sync is done (its service holds
it until then), and the root cannot know which shards are busy.

Examples
--------
>>> import torch
>>> root = RootAverager(shards=2, root=1)
>>> root.on_shard(0, full_syncs=1, alive=3, reference=torch.tensor([0.0])) is None   # 1 of 2 full syncs
True
>>> root.on_shard(1, full_syncs=1, alive=1, reference=torch.tensor([4.0])).tolist()
[1.0]
>>> root.root_syncs
1
"""

from __future__ import annotations

import torch

from streamlearn.errors import ConfigError
from streamlearn.sync.hierarchy import adopt_root, root_average

__all__ = ["RootAverager", "adopt_root"]


class RootAverager:
    """The root's rule over the shards' reports (see the module docstring).

    Parameters
    ----------
    shards
        Number of shards (>= 1).
    root
        Average after ``root * shards`` full syncs of the shards (>= 1).
    """

    def __init__(self, shards: int, root: int):
        for name, value in (("shards", shards), ("root", root)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        self.shards, self.root = shards, root
        self.root_syncs = 0
        self._refs: dict[int, torch.Tensor] = {}
        self._alive: dict[int, int] = {}
        self._seen: dict[int, int] = {}  # shard -> its full-sync count at its last report
        self._since = 0  # full syncs of the shards since the last average

    def on_shard(self, shard: int, full_syncs: int, alive: int, reference: torch.Tensor) -> torch.Tensor | None:
        """A shard's full sync: its count of full syncs, alive nodes and reference. Returns the average when due.

        A shard that restarted (its count went back) counts one full sync for this report."""
        if isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard < self.shards:
            raise ConfigError(f"shard must be in [0, {self.shards - 1}], got {shard!r}")
        last = self._seen.get(shard)
        self._since += full_syncs - last if last is not None and full_syncs > last else 1
        self._seen[shard] = full_syncs
        self._refs[shard], self._alive[shard] = reference, max(0, int(alive))
        if self._since < self.root * self.shards or not sum(self._alive.values()):
            return None
        self._since = 0
        self.root_syncs += 1
        shards = sorted(self._refs)
        return root_average([self._refs[s] for s in shards], [self._alive[s] for s in shards])

    def get_state(self) -> tuple[dict, dict]:
        """``(arrays, meta)`` to keep across a restart: the shards' latest references (``ref.<shard>``) and the
        counts (JSON-ready). :meth:`set_state` puts them back into a root of the same shards and root.

        >>> import torch
        >>> a = RootAverager(shards=2, root=2)
        >>> _ = a.on_shard(1, full_syncs=3, alive=2, reference=torch.tensor([1.0]))
        >>> b = RootAverager(shards=2, root=2)
        >>> b.set_state(*a.get_state())
        >>> b.on_shard(0, full_syncs=1, alive=2, reference=torch.tensor([3.0])) is None  # 2 of 4 full syncs
        True
        >>> b.on_shard(1, full_syncs=5, alive=2, reference=torch.tensor([1.0])).tolist()  # 3 -> 5: two more
        [2.0]
        """
        arrays = {f"ref.{s}": r.detach().to("cpu", torch.float32) for s, r in self._refs.items()}
        meta = {"shards": self.shards, "root": self.root, "root_syncs": self.root_syncs, "since": self._since,
                "alive": sorted(self._alive.items()), "seen": sorted(self._seen.items())}
        return arrays, meta

    def set_state(self, arrays: dict, meta: dict) -> None:
        """Put back what :meth:`get_state` gave (ConfigError: another layout of shards, or a damaged state)."""
        if (meta.get("shards"), meta.get("root")) != (self.shards, self.root):
            raise ConfigError(f"root state of shards={meta.get('shards')}, root={meta.get('root')}; this root has "
                              f"shards={self.shards}, root={self.root}")
        try:
            alive = {int(s): int(n) for s, n in meta["alive"]}
            seen = {int(s): int(n) for s, n in meta["seen"]}
            refs = {int(s): torch.as_tensor(arrays[f"ref.{s}"], dtype=torch.float32) for s in alive}
            since, root_syncs = int(meta["since"]), int(meta["root_syncs"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"root state: damaged ({exc!r})") from None
        if any(not 0 <= s < self.shards for s in (*alive, *seen)):
            raise ConfigError(f"root state: shards {sorted({*alive, *seen})} outside [0, {self.shards - 1}]")
        self._alive, self._seen, self._refs, self._since, self.root_syncs = alive, seen, refs, since, root_syncs
