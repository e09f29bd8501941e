"""Batches: duration-bucketed dynamic batches, a loader that resumes mid-epoch, padding.

Batches are dictionaries::

    {"feats": (B, T, 80) float, "feat_lengths": (B,) int64,
     "tokens": (B, L) int64 (0-padded), "token_lengths": (B,) int64,
     "ids": list[str], "texts": list[str]}
"""

from __future__ import annotations

import math
import random
import warnings
from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Sampler

from lightning_amortized.data.augment import WaveAugment
from lightning_amortized.data.features import LogMelFilterbank, SpecAugment
from lightning_amortized.seeding import derive_seed

__all__ = ["DurationBatchSampler", "ResumableDataLoader", "SeededBatch", "SpeechCollator", "tag_items"]


#: Epochs between the batch orders of consecutive seeds (was 1: seed s at epoch e drew seed 0's order of epoch s + e).
SEED_STRIDE = 1_000_003


class DurationBatchSampler(Sampler[list[int]]):
    """Dynamic batches of similar-length utterances holding at most ``max_seconds`` of audio.

    Utterances are sorted by duration, cut into batches whose padded size
    (``len(batch) * longest``) stays under ``max_seconds``, and the batch order is
    shuffled per epoch from ``seed * 1_000_003 + epoch`` (seeds a million epochs apart, so seed 1
    does not replay seed 0's orders one epoch later; seed 0 keeps the orders it always had.
    Lightning calls :meth:`set_epoch`; call it
    yourself in a plain PyTorch loop). With
    ``sortagrad_epochs=n`` the first ``n`` epochs visit batches shortest first
    (SortaGrad, Amodei et al. 2016), which gets CTC training past its initial
    all-blank plateau sooner. Under
    ``torch.distributed`` each rank takes every ``world_size``-th batch (the batch
    count is padded to a multiple of the world size so ranks stay in step; a padding batch
    is marked ``repeat``, and evaluation leaves it out of the metrics). An utterance
    longer than ``max_seconds`` forms a batch of its own (a warning counts them).
    ``max_stretch`` (>= 1) is how much longer augmentation can make an utterance (speed
    perturbation at factor 0.9: 1 / 0.9): batches are cut on durations times it, so the cap
    holds after augmentation. Each
    batch is a :class:`SeededBatch` whose ``seed`` follows from ``seed``, the epoch, the
    batch's position and the rank.

    Example:
        >>> s = DurationBatchSampler([1.0, 2.0, 1.5, 4.0], max_seconds=4.0, shuffle=False)
        >>> list(s)
        [[0, 2], [1], [3]]
    """

    def __init__(
        self,
        durations: Sequence[float],
        max_seconds: float,
        shuffle: bool = True,
        seed: int = 0,
        max_batch_size: int | None = None,
        sortagrad_epochs: int = 0,
        max_stretch: float = 1.0,
    ) -> None:
        if max_seconds <= 0:
            raise ValueError(f"Expected argument `max_seconds` to be > 0, but got {max_seconds}.")
        if not max_stretch >= 1.0:
            raise ValueError(f"Expected argument `max_stretch` to be >= 1, but got {max_stretch}.")
        if max_batch_size is not None and not max_batch_size >= 1:
            raise ValueError(f"Expected argument `max_batch_size` to be None or >= 1, but got {max_batch_size}.")
        self.max_seconds, self.shuffle, self.seed, self.epoch = max_seconds, shuffle, seed, 0
        self.sortagrad_epochs = sortagrad_epochs
        self._skip = 0
        durations = [float(d) * max_stretch for d in durations]  # as long as augmentation can make them
        order = sorted(range(len(durations)), key=lambda i: (durations[i], i))
        batches: list[list[int]] = []
        cur: list[int] = []
        for i in order:
            longest = durations[i]  # ascending order: the new item is the longest
            full = max_batch_size is not None and len(cur) >= max_batch_size
            if cur and ((len(cur) + 1) * longest > max_seconds or full):
                batches.append(cur)
                cur = []
            cur.append(i)
        if cur:
            batches.append(cur)
        self.batches = batches
        too_long = [d for d in durations if d > max_seconds]
        if too_long:
            warnings.warn(
                f"{len(too_long)} utterance(s) are longer than max_seconds={max_seconds:g} (the longest "
                f"{max(too_long):.1f} s{f', after speed perturbation (x{max_stretch:.3g})' if max_stretch > 1 else ''}); "
                "each forms a batch of its own, over the cap. Raise `max_batch_seconds` "
                "or drop them from the manifest if memory is tight.",
                stacklevel=2,
            )

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle the batch order for ``epoch`` (Lightning calls it through :attr:`sampler`)."""
        self.epoch = epoch

    @property
    def sampler(self) -> DurationBatchSampler:
        """This sampler itself.

        Lightning calls ``set_epoch`` on ``dataloader.sampler`` and on
        ``dataloader.batch_sampler.sampler``, never on the batch sampler; this alias is
        how a batch sampler that shuffles by epoch receives the epoch.
        """
        return self

    def skip_next(self, batches: int) -> None:
        """Make the next iteration start after its first ``batches`` batches (resuming mid-epoch)."""
        if batches < 0:
            raise ValueError(f"Expected argument `batches` to be >= 0, but got {batches}.")
        self._skip = batches

    def _rank(self) -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def __iter__(self) -> Iterator[list[int]]:
        # a generator: the order is drawn at the first batch, after Lightning's `set_epoch`
        skip, self._skip = self._skip, 0
        order = list(range(len(self.batches)))
        if self.shuffle and self.epoch >= self.sortagrad_epochs:
            random.Random(self.seed * SEED_STRIDE + self.epoch).shuffle(order)
        rank, world = self._rank()
        if world > 1 and order:
            total = math.ceil(len(order) / world) * world
            # cyclic padding: every rank gets as many batches as __len__ says, also when there are
            # fewer batches than ranks (a small dev split on many GPUs)
            n = len(order)
            order = (order * math.ceil(total / n))[:total][rank::world]
            repeats = [p >= n for p in range(rank, total, world)]  # positions past the real batches
        else:
            repeats = [False] * len(order)
        for position in range(skip, len(order)):
            # the seed of the batch's augmentation depends on where the batch is, not on what ran before
            seed = derive_seed(self.seed, self.epoch, position, rank)
            yield SeededBatch(self.batches[order[position]], seed, repeat=repeats[position])

    def __len__(self) -> int:
        _, world = self._rank()
        return math.ceil(len(self.batches) / world)


class SeededBatch(list):
    """A batch of dataset indices carrying the seed of its augmentation (``.seed``).

    :meth:`SpeechDataset.__getitems__` passes the seed to the items and
    :class:`SpeechCollator` draws the batch's SpecAugment masks from it, in the main
    process or in a worker alike, so a resumed epoch draws the same masks.
    """

    def __init__(self, indices: Sequence[int], seed: int, repeat: bool = False) -> None:
        super().__init__(indices)
        self.seed = seed
        self.repeat = repeat


def tag_items(items: list[dict[str, Any]], indices: Sequence[int]) -> list[dict[str, Any]]:
    """Copy a :class:`SeededBatch`'s seed (``"batch_seed"``) and repeat flag (``"batch_repeat"``) into its items.

    A dataset's ``__getitems__(indices)`` calls this so that :class:`SpeechCollator` draws the
    batch's augmentation from its seed and marks a DDP padding batch (``batch["repeat"]``),
    which :class:`~lightning_amortized.module.ASRModule` does not score twice. Datasets without
    ``__getitems__`` (a plain list) lose both: ``DataLoader`` fetches their items one by one.

    Example:
        >>> tag_items([{"id": "a"}], SeededBatch([0], seed=7, repeat=True))
        [{'id': 'a', 'batch_seed': 7, 'batch_repeat': True}]
    """
    seed, repeat = getattr(indices, "seed", None), bool(getattr(indices, "repeat", False))
    for item in items:  # written every time: a dataset may hand out the same dicts again
        if seed is None:
            item.pop("batch_seed", None)
        else:
            item["batch_seed"] = seed
        item["batch_repeat"] = repeat
    return items


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over a :class:`DurationBatchSampler` whose place in the epoch is checkpointed.

    Lightning saves ``state_dict()`` of every training loader that has one into the
    checkpoint (``loops.fit_loop.state_dict.combined_loader``) and calls
    ``load_state_dict`` before the loader's first iteration after a mid-epoch resume. The
    state is the epoch and the number of batches already handed out; the resumed
    iteration starts right after them, without loading the skipped batches. Iteration
    starts lazily, at the first batch, so that the sampler has received its epoch from
    Lightning before the order is drawn (also with workers).

    Example:
        >>> sampler = DurationBatchSampler([1.0, 2.0, 1.5, 4.0], max_seconds=4.0, shuffle=False)
        >>> dl = ResumableDataLoader(list(range(4)), batch_sampler=sampler)
        >>> it = iter(dl); _ = next(it); dl.state_dict()
        {'epoch': 0, 'batches': 1}
        >>> dl2 = ResumableDataLoader(list(range(4)), batch_sampler=sampler)
        >>> dl2.load_state_dict(dl.state_dict()); [b.tolist() for b in dl2]
        [[1], [3]]

    Lightning (2.5, 2.6) drops loader states when ``configure_optimizers`` reads
    ``trainer.estimated_stepping_batches`` (Lightning-AI/pytorch-lightning#20550), as
    :class:`~lightning_amortized.module.ASRModule` does for its schedule;
    :class:`LibriSpeechDataModule` therefore also saves this state in its own
    ``state_dict`` and hands it to the loader it built.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.batch_sampler, DurationBatchSampler):
            raise TypeError(
                "ResumableDataLoader needs `batch_sampler=DurationBatchSampler(...)`, "
                f"but got {type(self.batch_sampler).__name__}."
            )
        self._yielded = 0
        self._resume_at = 0
        self._resume_epoch: int | None = None

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return self._from_resume_point()

    def _from_resume_point(self) -> Iterator[Any]:
        # the resume point is read at the first batch: a state loaded after `iter()` still counts. It
        # belongs to the epoch it was saved in: an epoch cut short (limit_train_batches, max_steps,
        # early stopping) is over, and Lightning goes on with the next one, which starts at its first batch
        start, self._resume_at = self._resume_at, 0
        if self._resume_epoch is not None and self.batch_sampler.epoch != self._resume_epoch:
            start = 0
        self._resume_epoch = None
        self._yielded = start
        self.batch_sampler.skip_next(start)
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "batches"}``: the sampler's epoch and the batches handed out in it."""
        return {"epoch": int(self.batch_sampler.epoch), "batches": int(self._yielded)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Resume the next iteration at ``state_dict["batches"]`` of epoch ``state_dict["epoch"]``.

        A state taken at the end of an epoch resumes at the start of the next one.
        """
        epoch, batches = int(state_dict["epoch"]), int(state_dict["batches"])
        if batches >= len(self):
            epoch, batches = epoch + 1, 0
        self.batch_sampler.set_epoch(epoch)
        self._resume_at, self._resume_epoch = batches, epoch


class SpeechCollator:
    """Pads features (or computes log-mel features from padded waveforms), applies
    SpecAugment when training, and pads tokens.

    Items holding ``"feats"`` ``(T, n_mels)`` are padded as they are; items holding
    ``"wav"`` get features from ``features`` computed on the padded batch, after
    ``augment`` (waveform augmentation, training only). Augmentation and SpecAugment draw
    from the batch's ``"batch_seed"`` (set by :class:`SeededBatch`) when the items carry
    one, else from torch's global generator.

    Raises:
        ValueError: ``augment`` is set but the items hold features (cached features cannot
            be augmented: build the training set without ``features``).
    """

    def __init__(
        self,
        features: LogMelFilterbank | None = None,
        spec_augment: SpecAugment | None = None,
        augment: WaveAugment | None = None,
    ) -> None:
        self.features = features
        self.spec_augment = spec_augment
        self.augment = augment

    @staticmethod
    def _generator(items: list[dict[str, Any]], stream: int) -> torch.Generator | None:
        seed = items[0].get("batch_seed")
        return None if seed is None else torch.Generator().manual_seed(derive_seed(seed, stream))

    def _features(self, items: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        if "feats" in items[0]:
            if self.augment is not None:
                raise ValueError(
                    "Waveform augmentation needs waveforms, but the items hold features: build the training "
                    "SpeechDataset without `features` (LibriSpeechDataModule does so when `augment` is set)."
                )
            feat_lengths = torch.tensor([it["feats"].shape[0] for it in items])
            feats = torch.zeros(len(items), int(feat_lengths.max()), items[0]["feats"].shape[1])
            for i, it in enumerate(items):
                feats[i, : it["feats"].shape[0]] = it["feats"]
            return feats, feat_lengths
        if self.features is None:
            raise ValueError("Items hold waveforms but the collator has no `features` to compute them with.")
        wav_lengths = torch.tensor([len(it["wav"]) for it in items])
        wavs = torch.zeros(len(items), int(wav_lengths.max()))
        for i, it in enumerate(items):
            wavs[i, : len(it["wav"])] = it["wav"]
        if self.augment is not None:
            wavs, wav_lengths = self.augment(wavs, wav_lengths, generator=self._generator(items, 1))
        return self.features(wavs, wav_lengths)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        feats, feat_lengths = self._features(items)
        if self.spec_augment is not None:
            feats = self.spec_augment(feats, feat_lengths, generator=self._generator(items, 0))
        token_lengths = torch.tensor([len(it["tokens"]) for it in items])
        tokens = torch.zeros(len(items), max(1, int(token_lengths.max())), dtype=torch.long)
        for i, it in enumerate(items):
            tokens[i, : len(it["tokens"])] = torch.tensor(it["tokens"], dtype=torch.long)
        return {
            "feats": feats,
            "feat_lengths": feat_lengths,
            "tokens": tokens,
            "token_lengths": token_lengths,
            "ids": [it["id"] for it in items],
            "texts": [it["text"] for it in items],
            # a batch repeated only to give every DDP rank as many batches: not scored again
            "repeat": bool(items[0].get("batch_repeat", False)),
        }
