"""Samples a node has read but not learned yet, oldest first, with where each came from.

Per sample: features, class index, sequence number, the position (offset) of the record it
counts against, and its early score (a late-labelled sample keeps the prediction made when its
reading arrived). Whole arrays, consumed from a head index, so taking a mini-batch is a slice.
Positions are plain integers: the buffer knows nothing of the transport.

Examples
--------
>>> import numpy as np
>>> buf = SampleBuffer(n_features=2)
>>> buf.extend([np.zeros((3, 2), np.float32)], [np.array([0, 1, 0])], [np.arange(3)], [np.full(3, 7)])
>>> len(buf), buf.learned_offset(default=8)
(3, 7)
>>> X, y, seq, early = buf.take(2)
>>> y.tolist(), seq.tolist(), early is None, len(buf)
([0, 1], [0, 1], True, 1)
>>> buf.give_back(1)  # the second was not learnt after all (a run stopped before it)
>>> buf.take(2)[2].tolist()
[1, 2]
"""

from __future__ import annotations

import numpy as np

__all__ = ["SampleBuffer"]


def _append(buf: np.ndarray, head: int, new: np.ndarray, order) -> np.ndarray:
    new = new if order is None else new[order]
    return np.concatenate([buf[head:], new]) if len(buf) > head else np.ascontiguousarray(new)


class SampleBuffer:
    """Samples read and not learned yet (see the module doc)."""

    def __init__(self, n_features: int):
        self.X = np.empty((0, n_features), dtype=np.float32)
        self.y = np.empty(0, dtype=np.int64)
        self.seq = np.empty(0, dtype=np.int64)
        self.off = np.empty(0, dtype=np.int64)
        # per sample: [late-labelled, its prediction on arrival was right, proba of the true label]
        self.early = np.empty((0, 3))
        self.late = False  # some buffered sample is late-labelled (its row of early is set)
        self.head = 0

    def __len__(self) -> int:
        return len(self.y) - self.head

    def extend(self, xs: list, ys: list, seqs: list, offs: list, keys: list | None = None,
               early: list | None = None) -> None:
        """Append parts (lists of arrays, each part in position order); ``keys`` order the parts' samples
        among each other (stable; default: ``offs``); ``early`` rows (default: none late-labelled)."""
        keys = offs if keys is None else keys
        order = None
        if len(keys) > 1:  # samples of several kinds of record (each kind comes in position order)
            order = np.argsort(np.concatenate(keys), kind="stable")
        h = self.head
        self.X = _append(self.X, h, np.concatenate(xs), order)
        self.y = _append(self.y, h, np.concatenate(ys), order)
        self.seq = _append(self.seq, h, np.concatenate(seqs), order)
        self.off = _append(self.off, h, np.concatenate(offs), order)
        if early is None:
            early = [np.zeros((sum(len(y) for y in ys), 3))]
        self.early = _append(self.early, h, np.concatenate(early), order)
        self.head = 0

    def take(self, n: int) -> tuple:
        """The next ``n`` samples as ``(X, y, seq, early)`` views (``early`` None when none is late-labelled)."""
        h = self.head
        self.head = h + n
        return (self.X[h:h + n], self.y[h:h + n], self.seq[h:h + n],
                self.early[h:h + n] if self.late else None)

    def give_back(self, n: int) -> None:
        """Return the last ``n`` samples taken: they are the next to be taken again (a run stopped early)."""
        if not 0 <= n <= self.head:
            raise ValueError(f"give_back: {n} samples, {self.head} taken")
        self.head -= n

    def compact(self) -> None:
        """Drop what was taken (between mini-batches, not at every one)."""
        h = self.head
        if h:
            self.X, self.y, self.seq, self.off, self.early = (
                self.X[h:], self.y[h:], self.seq[h:], self.off[h:], self.early[h:])
            self.head = 0
        if not len(self.y):
            self.late = False

    def learned_offset(self, default: int) -> int:
        """First position not processed: of a sample not learned yet, else ``default``."""
        if len(self):
            return int(self.off[self.head:].min())  # late-labelled samples keep their reading's older position
        return default

    def drop(self, off: int, seq: int) -> None:
        """Drop the samples of the record at ``off`` up to sequence number ``seq`` (learned before a restart)."""
        h = self.head
        keep = ~((self.off[h:] == off) & (self.seq[h:] <= seq))
        if not keep.all():
            self.X, self.y, self.seq, self.off, self.early = (
                a[h:][keep] for a in (self.X, self.y, self.seq, self.off, self.early))
            self.head = 0

    def learned_of_record(self, position: int) -> int | None:
        """The last sequence number already learned of the record at ``position`` when a mini-batch cut it."""
        h = self.head
        first = self.off[h:] == position
        return int(self.seq[h:][first].min()) - 1 if first.any() else None
