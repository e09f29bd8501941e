"""The neural diff file and its operations, in one import (kept for code written against it).

The pieces live in one module each:

- :mod:`~lightning_amortized.diffs.format`: the file layout (documented there), constants,
  errors, :class:`DiffTarget` and :class:`DiffInfo`;
- :mod:`~lightning_amortized.diffs.codec`: values and the ``gap-u8`` index stream;
- :mod:`~lightning_amortized.diffs.checksum`: :func:`weights_sha256` and the payload hash;
- :mod:`~lightning_amortized.diffs.budget`: projected sizes and byte budgets;
- :mod:`~lightning_amortized.diffs.export`, :mod:`~lightning_amortized.diffs.read`,
  :mod:`~lightning_amortized.diffs.apply`: write, read and apply files.
"""

from lightning_amortized.diffs.apply import apply_chain, apply_diff, apply_to_state_dict, merge, unmerge
from lightning_amortized.diffs.budget import entries_for_bytes, estimate_diff_bytes, split_stored
from lightning_amortized.diffs.checksum import weights_sha256
from lightning_amortized.diffs.codec import count_large_gaps, decode_gaps, encode_gaps
from lightning_amortized.diffs.export import export_diff, export_diff_from_weights
from lightning_amortized.diffs.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    GAP_ESCAPE,
    INDEX_ENCODINGS,
    SUPPORTED_VERSIONS,
    VALUE_DTYPES,
    BaseMismatchError,
    DiffError,
    DiffFormatError,
    DiffInfo,
    DiffIntegrityError,
    DiffTarget,
    IndexEncoding,
    ValueDtype,
)
from lightning_amortized.diffs.read import inspect_diff, read_diff

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "GAP_ESCAPE",
    "INDEX_ENCODINGS",
    "SUPPORTED_VERSIONS",
    "VALUE_DTYPES",
    "BaseMismatchError",
    "DiffError",
    "DiffFormatError",
    "DiffInfo",
    "DiffIntegrityError",
    "DiffTarget",
    "IndexEncoding",
    "ValueDtype",
    "apply_chain",
    "apply_diff",
    "apply_to_state_dict",
    "count_large_gaps",
    "decode_gaps",
    "encode_gaps",
    "entries_for_bytes",
    "estimate_diff_bytes",
    "export_diff",
    "export_diff_from_weights",
    "inspect_diff",
    "merge",
    "read_diff",
    "split_stored",
    "unmerge",
    "weights_sha256",
]
