"""Deterministic, resumable, rank-sharded batches of a ForecastDataset.

The order of every epoch is a pure function of (seed, epoch): a permutation of the flat
indices and one lead per position, drawn from numpy Generators seeded with
`SeedSequence([seed, epoch])` — never from the global RNG. With G = batch_size * world_size
(the global batch), step s of an epoch covers positions [s*G, (s+1)*G) of that order, and rank r
takes the r-th batch_size chunk of it, positions [s*G + r*B, s*G + (r+1)*B). Hence:

  parity: concatenating the batches of ranks 0..N-1 at step s gives exactly the batch a single
  process with batch_size N*B yields at step s (same samples, same leads, same order).

drop_last=True drops the tail of an epoch that does not fill a global batch; drop_last=False
fills the last global batch by wrapping around to the start of the epoch's order, so every
rank always gets batch_size samples (the parity property holds either way).

The position (epoch, step in epoch) is the whole state: a loader restored from `state_dict()`
yields exactly the batch an uninterrupted one would have yielded next, also across epochs and
with worker processes (the sampler runs in the main process; workers only read samples).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import DataLoader

from orbit.data.batch import Batch
from orbit.data.dataset import ForecastDataset


def epoch_order(num_samples: int, lead_hours: Sequence[float], seed: int, epoch: int,
                shuffle: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Global order of one epoch: (N,) flat dataset indices and (N,) lead in hours per position."""
    order_seed, lead_seed = np.random.SeedSequence([seed, epoch]).spawn(2)
    indices = np.random.default_rng(order_seed).permutation(num_samples) if shuffle else np.arange(num_samples)
    leads = np.asarray(lead_hours, dtype=np.float64)[
        np.random.default_rng(lead_seed).integers(len(lead_hours), size=num_samples)]
    return indices, leads


def steps_per_epoch(num_samples: int, global_batch_size: int, drop_last: bool) -> int:
    """Global batches per epoch: floor(N / G) with drop_last, else ceil(N / G)."""
    return num_samples // global_batch_size if drop_last else -(-num_samples // global_batch_size)


class ShardedBatchSampler:
    """This rank's batches as lists of (index, lead_hours), from (epoch, step) on, endlessly."""

    def __init__(self, num_samples: int, lead_hours: Sequence[float], batch_size: int, *, seed: int,
                 rank: int, world_size: int, shuffle: bool, drop_last: bool, epoch: int = 0, step: int = 0):
        self.num_samples, self.lead_hours, self.batch_size = num_samples, tuple(lead_hours), batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch, self.step = epoch, step

    def __iter__(self) -> Iterator[list[tuple[int, float]]]:
        global_batch = self.batch_size * self.world_size
        steps = steps_per_epoch(self.num_samples, global_batch, self.drop_last)
        epoch, step = self.epoch, self.step
        while True:
            indices, leads = epoch_order(self.num_samples, self.lead_hours, self.seed, epoch, self.shuffle)
            # wrap-around fill of the last global batch (a no-op with drop_last)
            indices, leads = np.resize(indices, steps * global_batch), np.resize(leads, steps * global_batch)
            for s in range(step, steps):
                start = s * global_batch + self.rank * self.batch_size
                chunk = slice(start, start + self.batch_size)
                yield list(zip(indices[chunk].tolist(), leads[chunk].tolist()))
            epoch, step = epoch + 1, 0


class ResumableLoader:
    """Endless iterable of training `Batch`es for one rank, resumable from `state_dict()`.

    batch_size is per rank; lead_hours (default: the dataset's) are drawn uniformly per sample.
    Iterating goes on across epochs; `batches_per_epoch` says where one ends. Use one iterator
    at a time: the position advances as batches are handed out.
    """

    def __init__(self, dataset: ForecastDataset, batch_size: int, lead_hours: Sequence[float] | None = None,
                 seed: int = 0, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                 drop_last: bool = True, shuffle: bool = True, pin_memory: bool = False):
        self.lead_hours = tuple(float(lead) for lead in (dataset.lead_hours if lead_hours is None else lead_hours))
        unknown = sorted(set(self.lead_hours) - set(dataset.lead_hours))
        if not self.lead_hours or unknown:
            raise ValueError(f"lead_hours {list(self.lead_hours)} must be a non-empty subset of the "
                             f"dataset's leads {list(dataset.lead_hours)}")
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1, world_size >= 1 and 0 <= rank < world_size; got "
                             f"batch_size={batch_size}, rank={rank}, world_size={world_size}")
        if seed < 0 or num_workers < 0:
            raise ValueError(f"seed and num_workers must be >= 0, got seed={seed}, num_workers={num_workers}")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.drop_last, self.shuffle, self.pin_memory = drop_last, shuffle, pin_memory
        if self.batches_per_epoch == 0:
            raise ValueError(f"the dataset has {len(dataset)} init times, fewer than one global batch of "
                             f"{self.global_batch_size} (batch_size {batch_size} x world_size {world_size}); "
                             f"use a smaller batch or drop_last=False")
        self.epoch, self.step_in_epoch = 0, 0

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    @property
    def batches_per_epoch(self) -> int:
        return steps_per_epoch(len(self.dataset), self.global_batch_size, self.drop_last)

    def __iter__(self) -> Iterator[Batch]:
        sampler = ShardedBatchSampler(len(self.dataset), self.lead_hours, self.batch_size, seed=self.seed,
                                      rank=self.rank, world_size=self.world_size, shuffle=self.shuffle,
                                      drop_last=self.drop_last, epoch=self.epoch, step=self.step_in_epoch)
        loader = DataLoader(self.dataset, batch_sampler=sampler, collate_fn=self.dataset.collate,
                            num_workers=self.num_workers, pin_memory=self.pin_memory)
        for batch in loader:
            self.step_in_epoch += 1
            if self.step_in_epoch == self.batches_per_epoch:
                self.epoch, self.step_in_epoch = self.epoch + 1, 0
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Position of the next batch. global_batch_size guards against resuming with another one."""
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "seed": self.seed,
                "global_batch_size": self.global_batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue the saved stream: its seed replaces this loader's.

        The world size may change (elastic restart) as long as the global batch size is the same,
        since positions count global batches.
        """
        saved_global = state.get("global_batch_size", self.global_batch_size)
        if saved_global != self.global_batch_size:
            raise ValueError(f"state was saved with global batch size {saved_global}, this loader has "
                             f"{self.global_batch_size} (batch_size {self.batch_size} x world_size {self.world_size})")
        if not 0 <= state["step_in_epoch"] < self.batches_per_epoch:
            raise ValueError(f"step_in_epoch {state['step_in_epoch']} outside [0, {self.batches_per_epoch})")
        self.epoch, self.step_in_epoch, self.seed = int(state["epoch"]), int(state["step_in_epoch"]), int(state["seed"])


def evaluation_batches(dataset: ForecastDataset, lead_hours: Sequence[float], batch_size: int, stride: int = 1,
                       max_samples: int | None = None, *, rank: int = 0, world_size: int = 1,
                       num_workers: int = 0) -> DataLoader:
    """Held-out evaluation: every `stride`-th init time (at most `max_samples` of them) at every lead.

    No shuffling, no padding: the (init, lead) pairs are ordered lead by lead, rank r takes pairs
    r, r + world_size, ...; each pair is seen once over all ranks, so summed metrics (e.g. a
    SkillAccumulator all-reduced with SUM) equal the single-process result. Ranks may get
    different numbers of batches. Returns a DataLoader of `Batch` (it has a len()).
    """
    lead_hours = [float(lead) for lead in lead_hours]
    unknown = sorted(set(lead_hours) - set(dataset.lead_hours))
    if not lead_hours or unknown:
        raise ValueError(f"lead_hours {lead_hours} must be a non-empty subset of the dataset's leads "
                         f"{list(dataset.lead_hours)}")
    if batch_size < 1 or stride < 1 or (max_samples is not None and max_samples < 1):
        raise ValueError(f"need batch_size >= 1, stride >= 1, max_samples >= 1 or None; got "
                         f"batch_size={batch_size}, stride={stride}, max_samples={max_samples}")
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    inits = np.arange(0, len(dataset), stride)[:max_samples].tolist()
    pairs = [(index, lead) for lead in lead_hours for index in inits][rank::world_size]
    batches = [pairs[i:i + batch_size] for i in range(0, len(pairs), batch_size)]
    return DataLoader(dataset, batch_sampler=batches, collate_fn=dataset.collate, num_workers=num_workers)
