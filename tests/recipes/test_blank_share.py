"""benchmarks/blank_share.py counts blank frames of a CTC model, checked by hand on its own outputs."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from conftest import load_script
from lightning_amortized.module import ASRModule
from lightning_amortized.nn import RecurrentEncoder

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "blank_share.py"


def test_blank_shares_match_a_direct_count(tiny_corpus: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ASRModule(RecurrentEncoder(240, 16, num_layers=1))
    with torch.no_grad():
        model.head.bias[0] = 2.0  # lean towards blank so both counts are non-trivial
    ckpt = tmp_path / "m.pt"
    torch.save(model.state_dict(), ckpt)
    bench = load_script(SCRIPT, "bench_blank_share")
    assert bench.main(["--ckpt", f"random={ckpt}", "--root", str(tiny_corpus), "--split", "test",
                       "--results", str(tmp_path / "bs")]) == 0
    row = json.loads((tmp_path / "bs.json").read_text())["models"]["random"]
    # independent count over the same utterances
    from lightning_amortized.data import LibriSpeechDataModule

    dm = LibriSpeechDataModule(str(tiny_corpus), train_splits=[], val_splits=[], test_splits=["test"])
    dm.prepare_data()
    dm.setup("test")
    ds = dm.datasets["test:test"]
    model.eval()
    frames = argmax = p99 = 0
    with torch.no_grad():
        for i in range(len(ds)):
            feats = ds[i]["feats"][None]
            enc, n = model.encode(feats, torch.tensor([feats.shape[1]]))
            p = model.head(enc[0, : int(n[0])]).softmax(-1)
            frames += p.shape[0]
            argmax += int((p.argmax(-1) == 0).sum())
            p99 += int((p[:, 0] > 0.99).sum())
    assert (row["frames"], row["utterances"], row["symbols"]) == (frames, len(ds), 29)
    assert row["blank_argmax_share"] == argmax / frames and row["blank_p99_share"] == p99 / frames
    assert 0 < row["blank_argmax_share"] and row["blank_p99_share"] <= row["blank_argmax_share"]
