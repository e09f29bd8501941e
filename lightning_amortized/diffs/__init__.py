"""Neural diffs: train ``W = W0 + D`` on frozen weights and ship ``D`` as a small file.

See ``docs/neural_diff.md``. The pieces:

- :mod:`~lightning_amortized.diffs.targets`: choose parameters by glob / ``re:`` pattern;
- :mod:`~lightning_amortized.diffs.sparse` and :mod:`~lightning_amortized.diffs.hashed`:
  the two parametrizations; :mod:`~lightning_amortized.diffs.hashing`: the integer hash;
- :mod:`~lightning_amortized.diffs.attach`: attach / detach them on a model;
- the diff file: :mod:`~lightning_amortized.diffs.format` (layout, errors, metadata),
  :mod:`~lightning_amortized.diffs.codec` (values, ``gap-u8`` indices),
  :mod:`~lightning_amortized.diffs.checksum` (weight and payload hashes),
  :mod:`~lightning_amortized.diffs.budget` (sizes; byte budget -> entries),
  :mod:`~lightning_amortized.diffs.export`, :mod:`~lightning_amortized.diffs.read`,
  :mod:`~lightning_amortized.diffs.apply` (apply, chains, merge, unmerge);
  :mod:`~lightning_amortized.diffs.io` imports them all in one place;
- :mod:`~lightning_amortized.diffs.lowrank`: the low-rank (LoRA) peer ``W0 + B @ A * alpha / r``:
  parametrization, its fp16-factor file, apply and merge;
- :mod:`~lightning_amortized.diffs.checkpoints`: checkpoint files in and out (``load_module``: a
  LightningModule from a checkpoint saved while diffs were attached);
- :mod:`~lightning_amortized.diffs.commands`: the ``diff`` command line.
"""

from lightning_amortized.diffs.attach import attach_diffs, base_tensor, detach_diffs, diff_modules, effective_tensor
from lightning_amortized.diffs.checkpoints import load_module
from lightning_amortized.diffs.hashed import HashedDiff, allocate_buckets, hashed_delta
from lightning_amortized.diffs.hashing import hash_indices
from lightning_amortized.diffs.io import (
    FORMAT_VERSION,
    BaseMismatchError,
    DiffError,
    DiffFormatError,
    DiffInfo,
    DiffIntegrityError,
    DiffTarget,
    apply_chain,
    apply_diff,
    apply_to_state_dict,
    entries_for_bytes,
    estimate_diff_bytes,
    export_diff,
    export_diff_from_weights,
    inspect_diff,
    merge,
    read_diff,
    unmerge,
    weights_sha256,
)
from lightning_amortized.diffs.lowrank import (
    DenseDelta,
    LowRankDelta,
    LowRankInfo,
    apply_lowrank,
    attach_lowrank,
    detach_lowrank,
    export_lowrank,
    inspect_lowrank,
    lowrank_file_bytes,
    lowrank_modules,
    merge_lowrank,
    rank_for_bytes,
    read_lowrank,
    read_update,
)
from lightning_amortized.diffs.sparse import SparseDiff, magnitude_keep_masks, scheduled_density, sparse_apply
from lightning_amortized.diffs.targets import describe_targets, plain_parameters, select_names, select_targets

__all__ = [
    "FORMAT_VERSION",
    "BaseMismatchError",
    "DiffError",
    "DiffFormatError",
    "DiffInfo",
    "DiffIntegrityError",
    "DiffTarget",
    "DenseDelta",
    "HashedDiff",
    "LowRankDelta",
    "LowRankInfo",
    "SparseDiff",
    "allocate_buckets",
    "apply_chain",
    "apply_diff",
    "apply_lowrank",
    "apply_to_state_dict",
    "attach_diffs",
    "attach_lowrank",
    "base_tensor",
    "describe_targets",
    "detach_diffs",
    "detach_lowrank",
    "diff_modules",
    "effective_tensor",
    "entries_for_bytes",
    "estimate_diff_bytes",
    "export_diff",
    "export_diff_from_weights",
    "export_lowrank",
    "hash_indices",
    "hashed_delta",
    "inspect_diff",
    "inspect_lowrank",
    "load_module",
    "lowrank_file_bytes",
    "lowrank_modules",
    "magnitude_keep_masks",
    "merge",
    "merge_lowrank",
    "plain_parameters",
    "rank_for_bytes",
    "read_diff",
    "read_lowrank",
    "read_update",
    "scheduled_density",
    "select_names",
    "select_targets",
    "sparse_apply",
    "unmerge",
    "weights_sha256",
]
