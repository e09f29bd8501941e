"""benchmarks/heldout_accent_factors.py: the held-out accent's voice file taken apart, the wheel's data untouched."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import torch

from conftest import load_script
from lightning_amortized.data.espeak import _loader_paths
from lightning_amortized.module import ASRModule
from lightning_amortized.nn import RecurrentEncoder

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "heldout_accent_factors.py"


def _accent_file() -> Path:
    return next(Path(_loader_paths()[1]).glob("lang/*/en-029"))


def test_conditions_remove_one_group_or_one_replacement_each() -> None:
    bench = load_script(SCRIPT, "bench_heldout_accent_factors")
    text = _accent_file().read_text()
    conds = bench.conditions(text)
    replaces = [ln for ln in text.splitlines() if ln.startswith("replace")]
    assert len(replaces) == 6
    assert len(conds) == 2 + len(bench.GROUPS) + len(replaces) + 1
    assert conds["original voices"] == "" and conds["en-029, whole file"] == text
    for group in bench.GROUPS:
        kept = conds[f"en-029 without {group}"].splitlines()
        assert not any(ln.split()[:1] == [group] for ln in kept)
        assert len(kept) == len(text.splitlines()) - sum(ln.split()[:1] == [group] for ln in text.splitlines())
    for pair in replaces:
        kept = conds[f"en-029 without `{' '.join(pair.split())}`"].splitlines()
        assert pair not in kept and len(kept) == len(text.splitlines()) - 1
    only = conds["en-029: phonemes en-wi only"].splitlines()
    assert "phonemes en-wi" in only and "language en-029" in only
    assert not any(ln.split()[:1] in (["replace"], ["dictrules"], ["stressLength"], ["formant"]) for ln in only)


def test_renders_each_condition_and_scores_it(tiny_corpus: Path, tmp_path: Path) -> None:
    bench = load_script(SCRIPT, "bench_heldout_accent_factors")
    wheel_file = _accent_file()
    before = wheel_file.read_bytes()
    torch.manual_seed(0)
    ckpt = tmp_path / "m.pt"
    torch.save(ASRModule(RecurrentEncoder(240, 16, num_layers=1)).state_dict(), ckpt)
    work, results = tmp_path / "work", tmp_path / "res"
    # A process of its own: the benchmark must create the eSpeak synthesiser (one per process) on its data copy.
    out = subprocess.run([sys.executable, str(SCRIPT), "--ckpt", str(ckpt), "--root", str(tiny_corpus),
                          "--utterances", "2", "--workers", "1", "--work", str(work), "--results", str(results)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert wheel_file.read_bytes() == before
    rows = json.loads(results.with_suffix(".json").read_text())["rows"]
    conds = bench.conditions(before.decode())
    assert [r["condition"] for r in rows] == list(conds)
    for r in rows:
        assert r["utterances"] == 2 and r["cer"] >= 0 and r["wer_ci95"][0] <= r["wer"] <= r["wer_ci95"][1]
        assert r["voice_file"] == conds[r["condition"]].splitlines()
    original = sorted((work / "original" / "tt").rglob("*.flac"))
    assert len(original) == 2
    for flac in original:  # the test utterances, bit for bit
        assert flac.read_bytes() == (tiny_corpus / "test" / flac.relative_to(work / "original" / "tt")).read_bytes()
    whole = work / hashlib.sha256(conds["en-029, whole file"].encode()).hexdigest()[:12] / "tt"
    spoken = sorted(whole.rglob("*.flac"))
    assert [f.relative_to(whole) for f in spoken] == [f.relative_to(work / "original" / "tt") for f in original]
    assert all(a.read_bytes() != b.read_bytes() for a, b in zip(spoken, original))  # another accent
