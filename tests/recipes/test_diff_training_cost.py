"""benchmarks/diff_training_cost.py: one optimizer step per update method, timed and sized."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "diff_training_cost.py"


def test_trains_what_each_method_says_and_reports_ratios(tmp_path: Path) -> None:
    bench = load_script(SCRIPT, "bench_diff_training_cost")
    stem = tmp_path / "dtc"
    assert bench.main(["--batch", "2", "--seconds", "0.5", "--repeats", "1", "--no-memory",
                       "--results", str(stem)]) == 0
    out = json.loads(stem.with_suffix(".json").read_text())
    rows = out["methods"]
    assert list(rows) == list(bench.METHODS)
    model, _, _ = bench.build("full", None, 1, 0.2)
    params = dict(model.named_parameters())
    biases = sum(p.numel() for n, p in params.items() if "bias" in n)
    targeted = sum(p.numel() for n, p in params.items() if n.startswith("head.") or (n.startswith("encoder.") and "weight" in n))
    assert rows["full"]["trainable"] == sum(p.numel() for p in params.values())
    assert rows["bias"]["trainable"] == biases
    assert rows["sparse-10"]["trainable"] == targeted  # dense delta under a mask
    assert rows["hashed-10"]["trainable"] == round(0.1 * targeted)  # the buckets
    assert 0 < rows["lora-10"]["trainable"] < targeted
    assert rows["full"]["ratio_vs_full"] == 1.0
    for r in rows.values():
        assert r["step_ms"] > 0 and r["step_peak_mb"] is None
    assert out["target"]["worst_diff_ratio"] == max(rows["sparse-10"]["ratio_vs_full"], rows["hashed-10"]["ratio_vs_full"])
    assert "| sparse-10 |" in stem.with_suffix(".md").read_text()
    assert out["meta"]["architecture"] == "3x256 LSTM + CTC head, random weights"


def test_the_report_names_the_base_architecture(tmp_path: Path) -> None:
    import torch

    from lightning_amortized.module import ASRModule
    from lightning_amortized.nn import RecurrentEncoder

    bench = load_script(SCRIPT, "bench_diff_training_cost_arch")
    model = ASRModule(RecurrentEncoder(240, 24, num_layers=2), lr=1e-3)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, tmp_path / "b.ckpt")
    assert bench.architecture(str(tmp_path / "b.ckpt")).startswith("2x24 LSTM + CTC head, base ")


def test_step_memory_is_measured_in_a_fresh_process() -> None:
    import argparse

    bench = load_script(SCRIPT, "bench_diff_training_cost")
    args = argparse.Namespace(batch=2, seconds=0.5, memory_steps=1, base=None)
    assert bench.peak_memory("full", args) > 0  # gradients and AdamW state of 1.6 M parameters at least
