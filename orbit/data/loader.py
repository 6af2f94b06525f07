"""Deterministic, resumable, rank-sharded batches of a ForecastDataset.

The sample order, rank sharding, drop_last and state format are `orbit.data.sampler.ShardedSampler`'s
(see there: parity across world sizes, exact resume across epochs). On top of it each sample gets a
lead, drawn uniformly per (seed, epoch, sample) from its own numpy stream, so the lead of a sample does
not depend on the rank, the world size or the position it lands in. The sampler runs in the main
process; worker processes only read samples, so resuming also works with workers.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
from torch.utils.data import DataLoader

from orbit.data.batch import Batch
from orbit.data.dataset import ForecastDataset
from orbit.data.sampler import ShardedSampler, evenly_spaced

LEAD_STREAM = 1  # third seed word: keeps the lead draws independent of the sampler's [seed, epoch] order


def epoch_leads(num_samples: int, lead_hours: Sequence[float], seed: int, epoch: int) -> np.ndarray:
    """(N,) lead in hours of every sample index in one epoch."""
    rng = np.random.default_rng([seed, epoch, LEAD_STREAM])
    return np.asarray(lead_hours, dtype=np.float64)[rng.integers(len(lead_hours), size=num_samples)]


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
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.sampler = ShardedSampler(len(dataset), batch_size, seed=seed, rank=rank, world_size=world_size,
                                      shuffle=shuffle, drop_last=drop_last)
        self.dataset, self.num_workers, self.pin_memory = dataset, num_workers, pin_memory

    @property
    def global_batch_size(self) -> int:
        return self.sampler.global_batch_size

    @property
    def batches_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch

    def _index_lead_pairs(self) -> Iterator[list[tuple[int, float]]]:
        """The sampler's batches as the dataset's [(index, lead)], from the current position on."""
        leads_epoch, leads = -1, np.empty(0)
        for epoch, indices in self.sampler.batches():
            if epoch != leads_epoch:
                leads_epoch, leads = epoch, epoch_leads(len(self.dataset), self.lead_hours, self.sampler.seed, epoch)
            yield list(zip(indices.tolist(), leads[indices].tolist()))

    def __iter__(self) -> Iterator[Batch]:
        loader = DataLoader(self.dataset, batch_sampler=self._index_lead_pairs(), collate_fn=self.dataset.collate,
                            num_workers=self.num_workers, pin_memory=self.pin_memory)
        for batch in loader:  # the DataLoader prefetches ahead; count only the batches handed out
            self.sampler.advance()
            yield batch

    def state_dict(self) -> dict[str, int]:
        """The sampler's state (format: `orbit.data.sampler`)."""
        return self.sampler.state_dict()

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Continue the saved stream: its seed replaces this loader's; the world size may change as
        long as the global batch size is the same."""
        self.sampler.load_state_dict(state)


def evaluation_inits(dataset: ForecastDataset, per_source: int | None = None) -> np.ndarray:
    """Flat indices of the init times to score: `per_source` of each source's init times (all if
    None or fewer), evenly spaced from its first to its last, so every source is scored over its
    whole evaluation period, every season and (spacings not a multiple of a day) every hour.
    """
    if per_source is not None and per_source < 1:
        raise ValueError(f"per_source must be >= 1 or None, got {per_source}")
    chosen = [indices[int(p)] for indices in dataset.source_ranges() for p in evenly_spaced(len(indices), per_source)]
    return np.asarray(chosen, dtype=np.int64)


def evaluation_batches(dataset: ForecastDataset, lead_hours: Sequence[float], batch_size: int,
                       max_samples: int | None = None, *, rank: int = 0, world_size: int = 1,
                       num_workers: int = 0) -> DataLoader:
    """Held-out evaluation: `evaluation_inits(dataset, max_samples)` (per source) at every lead.

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
    if batch_size < 1 or (max_samples is not None and max_samples < 1):
        raise ValueError(f"need batch_size >= 1 and max_samples >= 1 or None; got "
                         f"batch_size={batch_size}, max_samples={max_samples}")
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    inits = evaluation_inits(dataset, max_samples).tolist()
    pairs = [(index, lead) for lead in lead_hours for index in inits][rank::world_size]
    batches = [pairs[i:i + batch_size] for i in range(0, len(pairs), batch_size)]
    return DataLoader(dataset, batch_sampler=batches, collate_fn=dataset.collate, num_workers=num_workers)
