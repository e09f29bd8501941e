"""Write manifests for a local LibriSpeech copy (no download happens here).

Usage:
    python recipes/librispeech/prepare.py /path/to/LibriSpeech \
        --splits train-clean-100 dev-clean test-clean test-other

Same as ``lightning-amortized prepare ROOT --splits ...``. Idempotent: splits whose
files did not change are skipped. Downloading LibriSpeech (openslr.org resource 12)
is a separate, optional step you do yourself.
"""

from __future__ import annotations

import sys

from lightning_amortized.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
