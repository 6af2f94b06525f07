"""One deterministic, resumable, rank-sharded order of sample indices for every task's loader.

The order of every epoch is a pure function of (seed, epoch): a permutation of range(num_samples)
drawn from `np.random.default_rng([seed, epoch])`, never from the global RNG, so a restarted run
rebuilds it from the state alone. With G = batch_size * world_size (the global batch), step s of an
epoch covers positions [s*G, (s+1)*G) of that order and rank r takes the r-th batch_size chunk of it.
Hence the ranks' shards of an epoch are disjoint, and

  parity: concatenating the batches of ranks 0..N-1 at step s gives exactly the batch a single
  process with batch_size N*B yields at step s.

drop_last=True drops the tail of an epoch that does not fill a global batch; drop_last=False fills
the last global batch by wrapping around to the start of the epoch's order, so every sample is seen
each epoch and every rank always gets batch_size indices.

State format (`state_dict()`), the same for every loader built on this sampler:

  {"epoch": int, "step_in_epoch": int, "seed": int, "global_batch_size": int}

epoch and step_in_epoch (0 <= step_in_epoch < batches_per_epoch) name the next global batch;
seed is the order's seed (it replaces the receiver's on load); global_batch_size guards against
resuming with another one. Positions count global batches, so the world size may change on
resume (elastic restart) as long as the global batch size stays the same.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping

import numpy as np

STATE_KEYS = ("epoch", "step_in_epoch", "seed", "global_batch_size")


class ShardedSampler:
    """Endless batches of this data rank's sample indices, resumable from `state_dict()`.

    Iterating yields (batch_size,) int64 arrays from the current position on and advances it per
    batch handed out. Consumers that run ahead of what they hand out (a DataLoader prefetching
    for its workers) iterate `batches()` instead, which leaves the position alone, and call
    `advance()` per batch actually consumed.
    """

    def __init__(self, num_samples: int, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, drop_last: bool = True):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1, world_size >= 1 and 0 <= rank < world_size; got "
                             f"batch_size={batch_size}, rank={rank}, world_size={world_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0 (it seeds a numpy SeedSequence), got {seed}")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.drop_last = shuffle, drop_last
        if self.batches_per_epoch == 0:
            raise ValueError(f"{num_samples} samples, fewer than one global batch of {self.global_batch_size} "
                             f"(batch_size {batch_size} x world_size {world_size}) with drop_last=True; use a smaller "
                             f"batch or more data")
        self.epoch, self.step_in_epoch = 0, 0

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    @property
    def batches_per_epoch(self) -> int:
        """Global batches per epoch: floor(N / G) with drop_last, else ceil(N / G)."""
        g = self.global_batch_size
        return self.num_samples // g if self.drop_last else -(-self.num_samples // g)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The global order of one epoch (all ranks), trimmed or wrapped to whole global batches."""
        order = (np.random.default_rng([self.seed, epoch]).permutation(self.num_samples) if self.shuffle
                 else np.arange(self.num_samples))
        return np.resize(order, self.batches_per_epoch * self.global_batch_size)

    def batches(self) -> Iterator[tuple[int, np.ndarray]]:
        """(epoch, indices) of this rank's batches from the current position on; the position stays."""
        return self._batches_from(self.epoch, self.step_in_epoch)

    def _batches_from(self, epoch: int, step: int) -> Iterator[tuple[int, np.ndarray]]:
        while True:
            order = self.epoch_order(epoch)
            for s in range(step, self.batches_per_epoch):
                start = s * self.global_batch_size + self.rank * self.batch_size
                yield epoch, order[start:start + self.batch_size]
            epoch, step = epoch + 1, 0

    def advance(self) -> None:
        """Count one batch as consumed."""
        self.step_in_epoch += 1
        if self.step_in_epoch == self.batches_per_epoch:
            self.epoch, self.step_in_epoch = self.epoch + 1, 0

    def __iter__(self) -> Iterator[np.ndarray]:
        for _, indices in self.batches():
            self.advance()
            yield indices

    def state_dict(self) -> dict[str, int]:
        """Position of the next batch, in the format of the module docstring."""
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "seed": self.seed,
                "global_batch_size": self.global_batch_size}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Continue the saved stream: its position and seed replace this sampler's."""
        missing = [key for key in STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"sampler state {dict(state)} lacks {missing}; expected the keys {list(STATE_KEYS)}")
        if state["global_batch_size"] != self.global_batch_size:
            raise ValueError(f"state was saved with global batch size {state['global_batch_size']}, this sampler "
                             f"has {self.global_batch_size} (batch_size {self.batch_size} x world_size "
                             f"{self.world_size}); resume with the same global batch size")
        if state["epoch"] < 0 or not 0 <= state["step_in_epoch"] < self.batches_per_epoch:
            raise ValueError(f"need epoch >= 0 and 0 <= step_in_epoch < {self.batches_per_epoch} (batches per "
                             f"epoch), got epoch={state['epoch']}, step_in_epoch={state['step_in_epoch']}")
        if state["seed"] < 0:
            raise ValueError(f"seed must be >= 0, got {state['seed']}")
        self.epoch, self.step_in_epoch, self.seed = (int(state["epoch"]), int(state["step_in_epoch"]),
                                                      int(state["seed"]))


class SampledBatches(ABC):
    """Endless, resumable batches for one data rank of `length` in-memory samples: `batch(positions)`
    builds the batch of the sampler's positions. `drop_last=False` wraps the last global batch, so
    every sample is seen each epoch and the ranks' batches concatenate to the one-process batch."""

    def __init__(self, length: int, batch_size: int, seed: int, rank: int, world_size: int):
        self.sampler = ShardedSampler(length, batch_size, seed=seed, rank=rank, world_size=world_size,
                                      drop_last=False)

    @abstractmethod
    def batch(self, positions: np.ndarray):
        """The batch of the samples at `positions` (what the subclass's model consumes)."""

    def __iter__(self):
        for positions in self.sampler:
            yield self.batch(positions)

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.sampler.load_state_dict(state)


class RowBatches(SampledBatches):
    """(x, y) batches of the table rows `rows`: the loader of small in-memory tabular tasks."""

    def __init__(self, x: np.ndarray, y: np.ndarray, rows: np.ndarray, batch_size: int, seed: int, rank: int,
                 world_size: int):
        super().__init__(len(rows), batch_size, seed, rank, world_size)
        self.x, self.y, self.rows = x, y, rows

    def batch(self, positions: np.ndarray):
        import torch  # the sampler itself stays free of torch

        rows = self.rows[positions]
        return torch.from_numpy(self.x[rows]), torch.from_numpy(self.y[rows])


def evenly_spaced(length: int, count: int | None) -> np.ndarray:
    """`count` indices of range(length) (all if None or more), evenly spread from the first to the
    last: evaluation cases cover the whole period instead of its start."""
    if count is None or count >= length:
        return np.arange(length)
    if count < 1:
        raise ValueError(f"count must be >= 1 or None, got {count}")
    return np.unique(np.round(np.linspace(0, length - 1, count)).astype(np.int64))
