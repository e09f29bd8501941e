"""benchmarks/amnet_routing.py: imposed routings of one AmNet, checked against direct forwards."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchmetrics.text import WordErrorRate

from conftest import load_script
from lightning_amortized.module import ASRModule
from lightning_amortized.nn import RecurrentEncoder, SharedStateAmortizedEncoder

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "amnet_routing.py"


def test_policies_route_as_named_and_ends_equal_single_branches(tiny_corpus: Path) -> None:
    bench = load_script(SCRIPT, "bench_amnet_routing")
    torch.manual_seed(0)
    enc = SharedStateAmortizedEncoder(RecurrentEncoder(240, 24, 2), fast="lowrank", rank=4, frame_ms=30.0,
                                      device_flops_per_s=1e6)
    model = ASRModule(enc).eval()
    batches = bench.test_batches(str(tiny_corpus), limit=2)
    with torch.no_grad():  # blank on about half the frames of the slow branch: the oracles are non-trivial
        x, n = model.stacker(batches[0]["feats"], batches[0]["feat_lengths"])
        enc.force_branch = 1
        logits = model.head(enc(x, n)[0])[0, : int(n[0])]
        enc.force_branch = None
        margin = logits[:, 1:].max(-1).values - logits[:, 0]
        model.head.bias[0] += margin.median()
    rows = bench.evaluate(model, batches, bench.policies_for(seed=0))
    assert rows["branch@fast"]["slow_share"] == 0.0 and rows["branch@slow"]["slow_share"] == 1.0
    for s in bench.SHARES:
        assert rows[f"random@{s:g}"]["slow_share"] == pytest.approx(s, abs=0.1)
        assert rows[f"periodic@{s:g}"]["slow_share"] == pytest.approx(s, abs=0.05)
    shares = [rows[f"oracle_emission@{k}"]["slow_share"] for k in bench.WIDEN]
    assert shares == sorted(shares) and 0 < shares[0] < 1  # widening only adds frames
    assert rows["oracle_blank@0"]["slow_share"] == pytest.approx(1 - shares[0])
    # the ends of the curve are the branches alone; "learned" is the encoder's own routing
    for name, branch in (("branch@fast", 0), ("branch@slow", 1), ("learned", None)):
        enc.force_branch = branch
        wer = WordErrorRate()
        with torch.no_grad():
            for b in batches:
                x, n = model.stacker(b["feats"], b["feat_lengths"])
                wer.update(model.decode(enc(x, n)[0], n), b["texts"])
        enc.force_branch = None
        assert rows[name]["wer"] == pytest.approx(float(wer.compute()), abs=1e-6)


def test_bad_arguments_are_refused_with_what_to_pass(tmp_path: Path) -> None:
    bench = load_script(SCRIPT, "bench_amnet_routing_args")
    torch.manual_seed(0)
    ckpt = tmp_path / "plain.ckpt"
    model = ASRModule(RecurrentEncoder(240, 16, 1))
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": {}}, ckpt)
    with pytest.raises(SystemExit):  # argparse error: LABEL=CHECKPOINT
        bench.main(["--amnet", str(ckpt), "--single", "no-equals-sign", "--results", str(tmp_path / "r")])
    assert not (tmp_path / "r.json").exists()
