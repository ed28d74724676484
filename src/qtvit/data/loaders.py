"""Batch iterators shared by training and evaluation.

Both kinds slice one global order per epoch, drawn from (seed, epoch): step s of an epoch takes the global batch
``order[s*G:(s+1)*G]`` (G = per-process batch x world size) and rank r its r-th contiguous chunk. Hence the union of
the ranks' batches is exactly a single process's batch with the same global batch, every epoch's order is known
without saved state, and a resumed run re-enters an epoch at any step.
"""
from __future__ import annotations

import warnings
from typing import Iterator, NamedTuple

import torch

from .folder import Unreadable
from .transforms import tensor_eval_images, tensor_train_images

__all__ = ["Shard", "epoch_order", "TensorBatches", "FolderBatches", "collate_readable"]


class Shard(NamedTuple):
    """Which part of a dataset this process reads, and how: the seed of every epoch's order (and of the training
    transforms), this process's rank among `world` processes, and its loader's worker processes."""
    seed: int = 0
    rank: int = 0
    world: int = 1
    workers: int = 4


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> torch.Tensor:
    """The global sample order of an epoch: a permutation drawn from (seed, epoch), or 0..n-1."""
    return torch.randperm(n, generator=epoch_generator(seed, epoch)) if shuffle else torch.arange(n)


def _shard(n: int, batch_size: int, rank: int, world: int, train: bool) -> tuple[int, int]:
    """(steps, global batch). Training drops the last incomplete global batch so all ranks take the same steps."""
    g = batch_size * world
    steps = n // g if train else -(-n // g)
    if train and steps == 0:
        raise ValueError(f"{n} training images are fewer than one global batch ({batch_size} x {world} processes); "
                         "lower --batch-size")
    return steps, g


class TensorBatches:
    """Batches of in-memory uint8 images (Fashion-MNIST): (images uint8 (B, C, S, S), labels int64 (B,)).

    Training views are a random crop of the image zero-padded by `padding` plus a horizontal flip, with the crop
    offsets and flips drawn per epoch for every sample at once, in batched tensor ops (no per-image work).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, size: int, train: bool,
                 seed: int = 0, rank: int = 0, world: int = 1, padding: int = 0, hflip: bool = False):
        self.images, self.labels = images, labels
        self.batch_size, self.size, self.train = batch_size, size, train
        self.seed, self.rank, self.world, self.padding, self.hflip = seed, rank, world, padding, hflip
        self.steps, self.global_batch = _shard(len(labels), batch_size, rank, world, train)
        self.num_skipped = 0

    def __len__(self) -> int:
        return self.steps

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def iterate(self, epoch: int = 0, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        if self.train:
            g = epoch_generator(self.seed, epoch)
            order = torch.randperm(n, generator=g)
            crop = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=g)
            flip = (torch.rand(n, generator=g) < 0.5) & self.hflip
        else:
            order = torch.arange(n)
        for step in range(start_step, self.steps):
            lo = step * self.global_batch + self.rank * self.batch_size
            idx = order[lo:min(lo + self.batch_size, n)]
            if len(idx) == 0:  # the last eval batch may leave high ranks empty
                continue
            if self.train:
                x = tensor_train_images(self.images[idx], self.size, crop[lo:lo + len(idx)],
                                        flip[lo:lo + len(idx)], self.padding)
            else:
                x = tensor_eval_images(self.images[idx], self.size)
            yield x, self.labels[idx]


class _EpochSampler(torch.utils.data.Sampler):
    """This rank's sample indices of an epoch, from `start_step` on (see the module docstring)."""

    def __init__(self, order: torch.Tensor, steps: int, start_step: int, global_batch: int, batch_size: int,
                 rank: int):
        self.order, self.steps, self.start, self.g, self.b, self.rank = order, steps, start_step, global_batch, \
            batch_size, rank

    def __iter__(self):
        for step in range(self.start, self.steps):
            lo = step * self.g + self.rank * self.b
            yield from self.order[lo:lo + self.b].tolist()

    def __len__(self):
        n = len(self.order)
        return sum(max(0, min(self.b, n - s * self.g - self.rank * self.b)) for s in range(self.start, self.steps))


class _Failed(NamedTuple):
    """An input error (a bad mask, say) raised in a loader worker, carried to the main process as a value: raised
    there as it was, one line, instead of inside torch's worker traceback."""
    error: Exception


class _ReportErrors(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            return self.dataset[index]
        except (ValueError, OSError) as e:  # the errors that name a file and its fix; anything else is a bug
            return _Failed(e)


def collate_readable(items: list) -> tuple[torch.Tensor | None, torch.Tensor | None, list[Unreadable]]:
    """DataLoader collate for ImageFolder items: the readable ones stacked, the ``Unreadable`` markers returned apart
    (so the batch shrinks rather than borrowing other samples). (None, None, markers) when none could be read;
    (None, None, [failure]) when an item failed (see ``_Failed``)."""
    failed = [it for it in items if isinstance(it, _Failed)]
    if failed:
        return None, None, failed[:1]
    readable = [it for it in items if not isinstance(it, Unreadable)]
    unreadable = [it for it in items if isinstance(it, Unreadable)]
    if not readable:
        return None, None, unreadable
    x, y = torch.utils.data.default_collate(readable)
    return x, y, unreadable


class FolderBatches:
    """Batches of an ImageFolder decoded and cropped in DataLoader workers: (uint8 (B, C, S, S), labels (B,)).

    An unreadable image is left out of its batch, which comes out smaller; ``num_skipped`` counts distinct
    unreadable files, once each however many epochs or loader workers meet them (the workers report the files,
    this process counts them). An evaluation batch with no readable image at all is not yielded; in training it
    is an error, because every step counts (the schedule, the resume position, and on several processes the other
    ranks, which would wait for it forever in the gradient all-reduce). ``collate``: how a batch's items become
    the batch (subclasses whose items do not stack, detection's lists of images and targets, give their own).
    """

    collate = staticmethod(collate_readable)

    def __init__(self, dataset, batch_size: int, train: bool, seed: int = 0, rank: int = 0, world: int = 1,
                 workers: int = 4):
        self.dataset, self.batch_size, self.train = dataset, batch_size, train
        self.seed, self.rank, self.world, self.workers = seed, rank, world, workers
        self.steps, self.global_batch = _shard(len(dataset), batch_size, rank, world, train)
        self.skipped_paths: set[str] = set()

    @property
    def num_skipped(self) -> int:
        """Distinct unreadable images met so far, over every epoch and loader worker of this process."""
        return len(self.skipped_paths)

    def __len__(self) -> int:
        return self.steps

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def iterate(self, epoch: int = 0, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.dataset.epoch = epoch  # picked up by the workers, which get a copy of the dataset per iterator
        order = epoch_order(len(self.dataset), self.seed, epoch, shuffle=self.train)
        sampler = _EpochSampler(order, self.steps, start_step, self.global_batch, self.batch_size, self.rank)
        loader = torch.utils.data.DataLoader(
            _ReportErrors(self.dataset), batch_size=self.batch_size, sampler=sampler, num_workers=self.workers,
            pin_memory=torch.cuda.is_available(), drop_last=False, collate_fn=self.collate,
            # An explicit generator keeps DataLoader from drawing its worker seed from the global RNG.
            generator=torch.Generator().manual_seed(self.seed + epoch))
        for step, (x, y, unreadable) in enumerate(loader, start=start_step):
            for u in unreadable:
                if isinstance(u, _Failed):
                    raise u.error
                if u.path not in self.skipped_paths:
                    self.skipped_paths.add(u.path)
                    warnings.warn(f"skipping unreadable image: {u.reason}", stacklevel=2)
            if x is not None:
                yield x, y
            elif self.train:
                # A training step counts (schedule, resume position, the other ranks' all-reduce): it needs a batch.
                raise ValueError(f"no image of training step {step} (epoch {epoch}) on rank {self.rank} could be "
                                 f"read (first: {unreadable[0].reason}); every training step needs at least one "
                                 "readable image: remove or repair the unreadable files")
