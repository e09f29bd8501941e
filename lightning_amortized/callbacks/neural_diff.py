r"""
Neural Diff
^^^^^^^^^^^

Turn a fine-tuning run into training of a small diff ``W = W0 + D`` on frozen weights,
and export ``D`` as a verifiable file (see ``docs/neural_diff.md``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import torch
from typing_extensions import override

import lightning.pytorch as pl
from lightning.pytorch.callbacks.callback import Callback
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_only, rank_zero_warn

from lightning_amortized.callbacks.finite import check_finite_grads, check_finite_loss, grad_scale, grads_finite, loss_scaling
from lightning_amortized.diffs.attach import attach_diffs, detach_diffs, diff_modules
from lightning_amortized.diffs.hashed import HashedDiff, allocate_buckets
from lightning_amortized.diffs.budget import entries_for_bytes, estimate_diff_bytes, fewer_entries, split_stored
from lightning_amortized.diffs.io import VALUE_DTYPES, DiffInfo, count_large_gaps, export_diff
from lightning_amortized.diffs.sparse import SparseDiff, magnitude_keep_masks, scheduled_density
from lightning_amortized.diffs.targets import describe_targets, plain_parameters, select_targets

__all__ = ["NeuralDiff"]

_STATE_VERSION = 1
PRUNE_SCORES = ("magnitude", "fisher")


class NeuralDiff(Callback):
    r"""Train a sparse or hashed diff on frozen weights and export it.

    In ``setup()`` (before ``configure_optimizers``) every parameter of the
    ``LightningModule`` is frozen and each target gets a parametrization so the forward
    pass uses ``W0 + D``; the diff tensors are then the only trainable parameters (an
    optimizer built from ``self.parameters()`` trains exactly them).

    - ``method="sparse"``: dense ``D`` with a mask. At the start of epoch ``e`` (of
      ``E = schedule_epochs or trainer.max_epochs``) the mask is pruned by magnitude to
      density ``d(e) = d_final + (1 - d_final) * (1 - e / (E - 1)) ** schedule_power``,
      pruning first from matrices denser than ``density_cap_factor * d(e)``; the last
      epoch trains at the budget, and ``on_train_end`` enforces it in any case. With
      ``prune_score="fisher"`` entries are ranked by ``F * D**2`` instead of ``|D|``
      (the optimal-brain-damage estimate of the loss increase from zeroing an entry),
      ``F`` the sum over optimizer steps since the last scheduled pruning of the squared
      gradient of ``D`` (the mini-batch gradient, after gradient accumulation: a diagonal
      empirical Fisher of mini-batch gradients, kept in the callback's checkpoint state;
      before any gradient is seen the ranking is by ``|D|``).
    - ``method="hashed"``: ``D[i] = sign(i) * buckets[h(i)]``; the budget is the number of
      buckets, split over targets in proportion to their size.

    A NaN or Inf loss, or gradient of a diff tensor, stops training before the optimizer
    step with a :class:`~lightning_amortized.callbacks.finite.NonFiniteError` naming the step
    (and the parameter): a non-finite update is never applied. Under fp16 loss scaling
    (``precision="16-mixed"``) non-finite gradients are left to the ``GradScaler``, which
    skips those steps and lowers the scale.

    Args:
        method: ``"sparse"`` or ``"hashed"``.
        budget: a ``float`` in ``(0, 1]``: the fraction of the targeted entries kept
            (sparse) or used as buckets (hashed); an ``int``: the size in bytes the exported
            file must not exceed, header included (sparse: about one index byte plus the
            value per entry; hashed: the value per bucket), turned into entries by
            :func:`~lightning_amortized.diffs.budget.entries_for_bytes`; at the end of
            training a few more entries are pruned if the exact size is over.
        targets: glob or ``re:`` patterns over plain parameter names (``"*.weight"``,
            ``"re:encoder\.rnn\..*"``); each pattern must match something.
        exclude: patterns removed from the selection.
        seed: hash seed (hashed) and recorded seed (sparse).
        value_dtype: stored value type: ``"fp32"`` (bit-exact), ``"fp16"`` or ``"int8"``.
        export_path: if set, the diff is exported there (rank zero) at the end of ``fit``.
        dry_run: log the matched targets with shapes and sizes, attach nothing, and stop
            ``fit`` before the first step.
        schedule_epochs: epochs of the sparsification schedule (default ``trainer.max_epochs``).
        schedule_power: exponent of the density schedule (3 = cubic).
        density_cap_factor: per-matrix density cap as a multiple of the global density (``>= 1``).
        prune_score: what the sparse schedule ranks entries by: ``"magnitude"`` (``|D|``) or
            ``"fisher"`` (``F * D**2``, see above).

    Raises:
        ValueError: if an argument is invalid (the message names it).

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_amortized.callbacks.neural_diff import NeuralDiff
        >>> diff = NeuralDiff(method="sparse", budget=0.1, targets=["*.weight"], export_path="update-1.safetensors")
        >>> trainer = Trainer(callbacks=[diff], max_epochs=4)

    After ``trainer.fit(model, datamodule)`` the file ``update-1.safetensors`` holds the
    diff; ``diff.export(path, model)`` exports again, ``diff.remove(model)`` merges it.
    """

    def __init__(
        self,
        method: Literal["sparse", "hashed"] = "sparse",
        budget: int | float = 0.1,
        targets: str | Sequence[str] = ("*",),
        exclude: str | Sequence[str] = (),
        seed: int = 0,
        value_dtype: Literal["fp32", "fp16", "int8"] = "fp32",
        export_path: str | os.PathLike | None = None,
        dry_run: bool = False,
        schedule_epochs: int | None = None,
        schedule_power: float = 3.0,
        density_cap_factor: float = 4.0,
        prune_score: Literal["magnitude", "fisher"] = "magnitude",
    ) -> None:
        if method not in ("sparse", "hashed"):
            raise ValueError(f"Expected argument `method` to be 'sparse' or 'hashed', but got {method!r}.")
        if isinstance(budget, bool) or not isinstance(budget, (int, float)):
            raise ValueError(f"Expected argument `budget` to be a float fraction or an int byte size, but got {budget!r}.")
        if isinstance(budget, float) and not 0.0 < budget <= 1.0:
            raise ValueError(f"Expected argument `budget` (a fraction) to be in (0, 1], but got {budget}.")
        if isinstance(budget, int) and budget < 1:
            raise ValueError(f"Expected argument `budget` (bytes) to be >= 1, but got {budget}.")
        if value_dtype not in VALUE_DTYPES:
            raise ValueError(f"Expected argument `value_dtype` to be one of {list(VALUE_DTYPES)}, but got {value_dtype!r}.")
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
            raise ValueError(f"Expected argument `seed` to be an int in [0, 2**63), but got {seed!r}.")
        if schedule_epochs is not None and schedule_epochs < 1:
            raise ValueError(f"Expected argument `schedule_epochs` to be None or >= 1, but got {schedule_epochs}.")
        if schedule_power <= 0:
            raise ValueError(f"Expected argument `schedule_power` to be > 0, but got {schedule_power}.")
        if density_cap_factor < 1:
            raise ValueError(f"Expected argument `density_cap_factor` to be >= 1, but got {density_cap_factor}.")
        if prune_score not in PRUNE_SCORES:
            raise ValueError(f"Expected argument `prune_score` to be one of {list(PRUNE_SCORES)}, but got {prune_score!r}.")
        if prune_score != "magnitude" and method != "sparse":
            raise ValueError(f"Argument `prune_score` ranks a sparse diff's entries; method {method!r} has none.")
        self.method = method
        self.budget = budget
        self.targets = [targets] if isinstance(targets, str) else list(targets)
        self.exclude = [exclude] if isinstance(exclude, str) else list(exclude)
        if not self.targets:
            raise ValueError("Expected argument `targets` to hold at least one pattern, but got [].")
        self.seed = seed
        self.value_dtype = value_dtype
        self.export_path = export_path
        self.dry_run = dry_run
        self.schedule_epochs = schedule_epochs
        self.schedule_power = schedule_power
        self.density_cap_factor = density_cap_factor
        self.prune_score = prune_score

        self.target_names: list[str] = []
        self.target_numel = 0
        self.final_count = 0  # kept entries (sparse) or buckets (hashed) at the end
        self.bucket_counts: dict[str, int] = {}
        self.density = 1.0
        self.last_pruned_epoch = -1
        self._requires_grad: dict[str, bool] = {}
        self._sparse: dict[str, SparseDiff] = {}  # attached sparse diffs by name, for the per-step hooks
        self._fisher: dict[str, torch.Tensor] = {}  # prune_score="fisher": sum of squared gradients since the last prune
        self._diff_ids: set[int] = set()  # ids of the attached diff tensors (set in setup)

    @property
    @override
    def state_key(self) -> str:
        # a fixed prefix (not the class name) so subclasses resume from NeuralDiff checkpoints
        return f"NeuralDiff{ {'method': self.method, 'targets': self.targets, 'exclude': self.exclude}!r}"

    # ------------------------------------------------------------------ budget

    def _final_count(self, numels: dict[str, int], shapes: dict[str, tuple[int, ...]] | None = None) -> int:
        n = sum(numels.values())
        if isinstance(self.budget, float):
            count = round(self.budget * n)
        else:  # bytes: as many entries (buckets) as the real encoding fits, header included
            count = entries_for_bytes(self.method, self.value_dtype, numels, self.budget, extra=self._export_extra(),
                                      shapes=shapes)
        lowest = 1 if self.method == "sparse" else len(numels)
        if count < lowest:
            raise ValueError(
                f"Expected argument `budget` ({self.budget!r}) to allow at least {lowest} stored "
                f"{'entry' if self.method == 'sparse' else 'bucket(s)'}, but it allows {count}."
            )
        return min(count, n)

    # ------------------------------------------------------------------ hooks

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.dry_run:
            rank_zero_info("NeuralDiff dry run, targets:\n" + describe_targets(pl_module, self.targets, self.exclude))
            return
        attached = diff_modules(pl_module)
        if attached:
            if sorted(attached) != sorted(self.target_names):
                raise RuntimeError(
                    f"Model already carries diffs on {sorted(attached)} that this NeuralDiff did not attach; "
                    "merge or detach them first (NeuralDiff.remove / lightning_amortized.diffs.merge)."
                )
            self._diff_ids = {id(p) for d in attached.values() for p in d.parameters()}
            return  # setup() of a later stage (validate/test) on the same model
        if isinstance(pl_module, pl.LightningModule) and is_overridden("configure_model", pl_module):
            # Lightning builds these layers after the callbacks' setup; they must exist to be frozen and
            # targeted (Lightning asks configure_model to be idempotent: it is called again afterwards)
            pl_module.configure_model()
        names = select_targets(pl_module, self.targets, self.exclude)
        params = plain_parameters(pl_module)
        sizes = [params[n].numel() for n in names]
        final_count = self._final_count(dict(zip(names, sizes)), {n: tuple(params[n].shape) for n in names})
        buckets = dict(zip(names, allocate_buckets(sizes, final_count))) if self.method == "hashed" else {}
        # every parameter's flag by name, plain names for the targets-to-be (what they are called again after
        # remove()) and full names for the rest (weight_norm's original0/1 included)
        recorded = {n: p.requires_grad for n, p in pl_module.named_parameters()}
        recorded.update({n: p.requires_grad for n, p in params.items()})
        flags = {p: p.requires_grad for p in pl_module.parameters()}
        for p in flags:
            p.requires_grad_(False)
        try:
            created = attach_diffs(pl_module, names, self.method, num_buckets=buckets or None, seed=self.seed)
        except BaseException:  # the user's model as it was: trainable again, no half-attached state here
            for p, flag in flags.items():
                p.requires_grad_(flag)
            raise
        self.target_names, self.target_numel, self.final_count, self.bucket_counts = names, sum(sizes), final_count, buckets
        self._requires_grad = recorded
        # fresh diffs start a fresh schedule (this instance may have trained an earlier update; a resumed
        # run gets its position back from load_state_dict, which runs after setup)
        self.density, self.last_pruned_epoch, self._fisher = 1.0, -1, {}
        self._sparse = {n: d for n, d in created.items() if isinstance(d, SparseDiff)}
        self._diff_ids = {id(p) for d in created.values() for p in d.parameters()}  # for the check of every step
        model_bytes = sum(p.numel() * p.element_size() for p in params.values())
        rank_zero_info(
            f"NeuralDiff: {self.method} diff on {len(names)} target(s) ({self.target_numel:,} entries), budget "
            f"{self.final_count:,} {'entries' if self.method == 'sparse' else 'buckets'}, projected file "
            f"~{self.projected_bytes(pl_module):,} bytes vs {model_bytes:,} bytes of model weights."
        )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.dry_run:
            trainer.should_stop = True
            return
        diffs = diff_modules(pl_module)
        in_optimizers = {id(p) for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]}
        idle = [f"{name}.{pname}" for name, d in diffs.items() for pname, p in d.named_parameters()
                if id(p) not in in_optimizers]
        if idle and trainer.optimizers:
            rank_zero_warn(
                f"NeuralDiff: no optimizer holds the diff tensor(s) {idle[:4]}{' ...' if len(idle) > 4 else ''}; "
                "they will stay zero and waste the budget. Build the optimizer from self.parameters() (only the "
                "diffs are trainable) or include them."
            )
        # a run resumed from a checkpoint taken at an epoch's last batch starts the next epoch without
        # calling on_train_epoch_start: prune for it here (a no-op when the epoch is already pruned)
        self.on_train_epoch_start(trainer, pl_module)

    def _refuse_other_trainables(self, pl_module: pl.LightningModule, optimizer: Any) -> None:
        """Raise if ``optimizer`` would update a tensor that is not a diff (the file would not be the change)."""
        stray = {id(p) for g in optimizer.param_groups for p in g["params"]
                 if p.requires_grad and id(p) not in self._diff_ids}
        if stray:
            names = [n for n, p in pl_module.named_parameters() if id(p) in stray]
            raise RuntimeError(
                f"NeuralDiff trains only the diff tensors, but the optimizer would also update {names[:4]}"
                f"{' ...' if len(names) > 4 else ''} ({len(stray)} tensor(s) with requires_grad=True, e.g. unfrozen "
                "by BackboneFinetuning or by the module itself). The exported diff would not reproduce the trained "
                "model. Keep them frozen (NeuralDiff froze every parameter in setup) or fine-tune without NeuralDiff."
            )

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.dry_run or self.method != "sparse":
            return
        epoch = trainer.current_epoch
        if epoch <= self.last_pruned_epoch:
            return  # resumed inside an epoch that was already pruned
        target = scheduled_density(epoch, self._schedule_epochs(trainer), self._final_density(), self.schedule_power)
        if target < self.density - 1e-12:
            self._prune(trainer, pl_module, target)
            for f in self._fisher.values():  # the next scheduled pruning ranks by the gradients seen from here on
                f.zero_()
        self.last_pruned_epoch = epoch

    @override
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if not self.dry_run:
            check_finite_loss(loss, trainer.global_step, "NeuralDiff")

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if self.dry_run:
            return
        self._refuse_other_trainables(pl_module, optimizer)
        if not loss_scaling(trainer):  # fp16 AMP: the GradScaler skips overflow steps itself
            check_finite_grads(
                ((f"{name} (diff)", p) for name, d in diff_modules(pl_module).items() for p in d.parameters()),
                trainer.global_step,
                "NeuralDiff",
            )
        if self.prune_score == "fisher":  # (sparse diffs only: checked in __init__)
            grads = (p.grad for d in diff_modules(pl_module).values() for p in d.parameters() if p.grad is not None)
            if not loss_scaling(trainer) or grads_finite(grads):  # a step the scaler skips adds nothing
                self._accumulate_fisher(grad_scale(trainer, optimizer))

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.dry_run or self.method != "sparse":
            return
        for d in self._sparse.values():
            d.zero_pruned()

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.dry_run:
            return
        for key, value in self.stats(pl_module).items():
            pl_module.log(f"neural_diff/{key}", float(value), on_step=False, on_epoch=True, sync_dist=False)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.dry_run or self.method != "sparse":
            return
        if self._nnz(pl_module) > self.final_count:
            self._prune(trainer, pl_module, self._final_density(), keep=self.final_count)
        stats = self.stats(pl_module)
        if isinstance(self.budget, int):
            # the projection assumed evenly spread entries; the kept ones may need more 4-byte escapes
            while stats["projected_bytes"] > self.budget and stats["nonzeros"] > 1:
                keep = fewer_entries(int(stats["nonzeros"]), int(stats["projected_bytes"]), self.budget,
                                     self.value_dtype)
                self._prune(trainer, pl_module, self._final_density(), keep=keep)
                stats = self.stats(pl_module)
        rank_zero_info(
            f"NeuralDiff: {int(stats['nonzeros']):,} non-zeros ({100 * stats['budget_used']:.1f}% of the budget), "
            f"projected file ~{int(stats['projected_bytes']):,} bytes."
        )

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.export_path is not None and not self.dry_run:
            self.export(self.export_path, pl_module)

    # ------------------------------------------------------------------ pruning

    def _schedule_epochs(self, trainer: pl.Trainer) -> int:
        if self.schedule_epochs is not None:
            return self.schedule_epochs
        max_epochs = trainer.max_epochs
        if max_epochs is None or max_epochs < 1:
            rank_zero_warn(
                "NeuralDiff: `trainer.max_epochs` is not set; pass `schedule_epochs` for a gradual schedule. "
                "The budget is enforced once, at the end of training."
            )
            return 1
        return max_epochs

    def _final_density(self) -> float:
        return self.final_count / max(self.target_numel, 1)

    def _nnz(self, pl_module: pl.LightningModule) -> int:
        return sum(d.nnz for d in diff_modules(pl_module).values() if isinstance(d, SparseDiff))

    @torch.no_grad()
    def _accumulate_fisher(self, scale: float = 1.0) -> None:
        """``F += (grad(D) / scale)**2`` for every sparse diff (zero outside the mask, where gradients are zero).

        ``scale``: the loss scale the gradients still carry (:func:`~lightning_amortized.callbacks.finite.grad_scale`).
        """
        for name, d in self._sparse.items():
            if d.delta.grad is None:
                continue
            f = self._fisher.get(name)
            if f is None or f.device != d.delta.device:  # first step, or accumulators restored on the CPU
                f = self._fisher[name] = torch.zeros_like(d.delta) if f is None else f.to(d.delta.device)
            f.addcmul_(d.delta.grad, d.delta.grad, value=1.0 / scale**2)

    def _scores(self, named: dict[str, SparseDiff]) -> list[torch.Tensor]:
        """What pruning ranks entries by: ``|D|``, or ``F * D**2`` (``prune_score="fisher"``; ``|D|`` until a
        gradient has been seen, e.g. right after resuming from a checkpoint without accumulators)."""
        fisher = [self._fisher.get(n) for n in named]
        if self.prune_score == "magnitude" or all(f is None or not bool(f.any()) for f in fisher):
            return [d.delta for d in named.values()]
        return [d.delta.square() * (0.0 if f is None else f.to(d.delta.device)) for f, d in zip(fisher, named.values())]

    @torch.no_grad()
    def _prune(self, trainer: pl.Trainer, pl_module: pl.LightningModule, density: float, keep: int | None = None) -> None:
        named = {n: d for n, d in diff_modules(pl_module).items() if isinstance(d, SparseDiff)}
        diffs = list(named.values())
        if keep is None:
            keep = max(self.final_count, round(density * self.target_numel))
        masks = magnitude_keep_masks(self._scores(named), [d.mask for d in diffs], keep, cap_factor=self.density_cap_factor)
        distributed = trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()
        for d, m in zip(diffs, masks):
            if distributed:  # rank 0 decides; every rank gets the same mask bytes
                buf = m.to(torch.uint8)
                torch.distributed.broadcast(buf, src=0)
                m = buf.bool()
            d.mask.copy_(m)
            d.zero_pruned()
        self.density = density

    # ------------------------------------------------------------------ reporting

    def _export_extra(self) -> dict[str, Any]:
        """The ``extra_metadata`` :meth:`export` writes (also used to project the header size)."""
        return {"budget": self.budget, "targets": self.targets, "exclude": self.exclude}

    def projected_bytes(self, pl_module: pl.LightningModule) -> int:
        """Projected size in bytes of the file :meth:`export` would write at the budget.

        Sparse: the budget split over targets in proportion to their size, ``gap-u8`` indices
        with the expected number of 4-byte escapes for uniformly spread entries (see
        :func:`~lightning_amortized.diffs.estimate_diff_bytes`).
        """
        diffs = diff_modules(pl_module)
        if self.method == "sparse":
            split = split_stored({n: d.delta.numel() for n, d in diffs.items()}, self.final_count)
            stored = {n: (d.delta.numel(), split[n]) for n, d in diffs.items()}
        else:
            stored = {n: (d.bucket_index.numel(), d.num_buckets) for n, d in diffs.items() if isinstance(d, HashedDiff)}
        return estimate_diff_bytes(self.method, self.value_dtype, stored, extra=self._export_extra(),
                                   shapes=_target_shapes(diffs))

    def stats(self, pl_module: pl.LightningModule) -> dict[str, float]:
        """Current ``nonzeros`` (or ``buckets``), ``budget_used`` (fraction), ``density`` and ``projected_bytes``.

        ``projected_bytes`` is the size of the file :meth:`export` would write now (the
        current masks' index gaps are counted exactly).
        """
        diffs = diff_modules(pl_module)
        large_gaps = None
        if self.method == "sparse":
            nnz = self._nnz(pl_module)
            sparse = {n: d for n, d in diffs.items() if isinstance(d, SparseDiff)}
            stored = {n: (d.delta.numel(), d.nnz) for n, d in sparse.items()}
            large_gaps = {n: count_large_gaps(torch.nonzero(d.mask.reshape(-1)).reshape(-1)) for n, d in sparse.items()}
            key = "nonzeros"
        else:
            nnz = sum(d.num_buckets for d in diffs.values() if isinstance(d, HashedDiff))
            stored = {n: (d.bucket_index.numel(), d.num_buckets) for n, d in diffs.items() if isinstance(d, HashedDiff)}
            key = "buckets"
        projected = estimate_diff_bytes(
            self.method, self.value_dtype, stored, large_gaps=large_gaps, extra=self._export_extra(),
            shapes=_target_shapes(diffs),
        )
        return {
            key: float(nnz),
            "budget_used": nnz / max(self.final_count, 1),
            "density": nnz / max(self.target_numel, 1),
            "projected_bytes": float(projected),
        }

    # ------------------------------------------------------------------ export / removal

    def export(self, path: str | os.PathLike, pl_module: pl.LightningModule) -> DiffInfo | None:
        """Write the current diff to ``path`` on rank zero (other ranks return ``None``).

        Returns:
            The written file's :class:`~lightning_amortized.diffs.DiffInfo` (rank zero).
        """
        if self.method == "sparse" and self._nnz(pl_module) > self.final_count:
            rank_zero_warn(
                f"NeuralDiff.export: the diff keeps {self._nnz(pl_module):,} entries, more than the budget "
                f"({self.final_count:,}); the schedule has not finished."
            )
        if rank_zero_only.rank != 0:
            return None
        info = export_diff(
            pl_module,
            path,
            value_dtype=self.value_dtype,
            seed=self.seed,
            extra_metadata=self._export_extra(),
        )
        model_bytes = sum(p.numel() * p.element_size() for p in plain_parameters(pl_module).values())
        rank_zero_info(
            f"NeuralDiff: exported {info.file_bytes:,} bytes to {path} "
            f"({100.0 * info.file_bytes / max(model_bytes, 1):.2f}% of {model_bytes:,} bytes of weights; "
            f"max abs error {info.extra.get('max_abs_error', 0.0):.3g})."
        )
        return info

    def remove(self, pl_module: pl.LightningModule, merge: bool = True) -> None:
        """Detach the diffs (``merge=True``: ``W0 <- W0 + D``) and restore ``requires_grad`` flags."""
        detach_diffs(pl_module, merge=merge)
        self._sparse = {}
        for name, p in {**dict(pl_module.named_parameters()), **plain_parameters(pl_module)}.items():
            p.requires_grad_(self._requires_grad.get(name, p.requires_grad))

    # ------------------------------------------------------------------ checkpointing

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "method": self.method,
            "budget": self.budget,
            "targets": self.targets,
            "exclude": self.exclude,
            "seed": self.seed,
            "value_dtype": self.value_dtype,
            "target_names": self.target_names,
            "final_count": self.final_count,
            "bucket_counts": self.bucket_counts,
            "density": self.density,
            "last_pruned_epoch": self.last_pruned_epoch,
            "prune_score": self.prune_score,
            "fisher": {name: f.detach().cpu() for name, f in self._fisher.items()},
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for key in ("method", "seed", "target_names", "final_count", "bucket_counts", "prune_score"):
            ours, theirs = getattr(self, key), state_dict.get(key, "magnitude" if key == "prune_score" else None)
            if self.target_names and ours != theirs:  # setup() ran: the model is already wrapped
                raise ValueError(
                    f"NeuralDiff checkpoint has {key}={theirs!r} but this callback is configured with {ours!r}; "
                    "resume with the same NeuralDiff arguments."
                )
        self.density = float(state_dict["density"])
        self.last_pruned_epoch = int(state_dict["last_pruned_epoch"])
        self._fisher = {name: f.clone() for name, f in state_dict.get("fisher", {}).items()}


def _target_shapes(diffs: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """``{target: shape}`` of attached diffs (the shapes are in the file's header)."""
    return {n: tuple(d.delta.shape) if isinstance(d, SparseDiff) else tuple(d.shape) for n, d in diffs.items()}
