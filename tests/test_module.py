from __future__ import annotations

from pathlib import Path

import jiwer
import lightning.pytorch as pl
import pytest
import torch
from torchmetrics.text import CharErrorRate, WordErrorRate

from conftest import split_error_rates
from lightning_amortized.data import CharTokenizer, CorpusError, LibriSpeechDataModule, SyntheticDataModule
from lightning_amortized.evaluation import realtime_factor
from lightning_amortized.module import ASRModule, FrameStacker
from lightning_amortized.nn import ConformerEncoderAdapter, RecurrentEncoder


def test_wer_cer_match_jiwer() -> None:
    refs = ["SET A TIMER FOR TEN MINUTES", "PLAY SOME MUSIC", "WHAT'S THE WEATHER IN PARIS"]
    hyps = ["SET TIMER FOR TEN MINUTE", "PLAY SOME MUSIC NOW", "WHAT'S THE WEATHER IN PARIS"]
    wer, cer = WordErrorRate(), CharErrorRate()
    wer.update(hyps, refs)
    cer.update(hyps, refs)
    assert float(wer.compute()) == pytest.approx(jiwer.wer(refs, hyps), abs=1e-6)
    assert float(cer.compute()) == pytest.approx(jiwer.cer(refs, hyps), abs=1e-6)
    assert float(wer.compute()) == pytest.approx(3 / 14)  # 2 errors + 1 insertion over 14 words


def test_frame_stacker_lengths_and_content() -> None:
    x = torch.arange(2 * 7 * 2, dtype=torch.float).reshape(2, 7, 2)
    y, n = FrameStacker(3)(x, torch.tensor([7, 3]))
    assert y.shape == (2, 3, 6) and n.tolist() == [3, 1]
    assert torch.equal(y[0, 0], x[0, :3].reshape(-1))
    assert torch.equal(y[0, 2, 2:], torch.zeros(4))  # zero padding of the last group
    short = torch.randn(1, 4, 2)  # 4 frames: its second stacked frame is one real frame and two padding slots
    for fill in (0.0, -5.0, float("nan")):  # whatever a batch is padded with stays out of the real frames
        batch = torch.cat([torch.randn(1, 9, 2), torch.cat([short, torch.full((1, 5, 2), fill)], 1)])
        y, n = FrameStacker(3)(batch, torch.tensor([9, 4]))
        assert n.tolist() == [3, 2] and torch.equal(y[1, :2], FrameStacker(3)(short, torch.tensor([4]))[0][0])


def test_encoder_input_size_mismatch_is_explained() -> None:
    with pytest.raises(ValueError, match="input_size is 80 .* n_mels \\* stack = 80 \\* 3 = 240"):
        ASRModule(RecurrentEncoder(80, 16, 1))
    with pytest.raises(ValueError, match="`loss`"):
        ASRModule(RecurrentEncoder(240, 16, 1), loss="ctx")


def test_streaming_step_matches_forward() -> None:
    torch.manual_seed(0)
    enc = RecurrentEncoder(12, 16, num_layers=2, rnn_type="gru", projection=8).eval()
    x = torch.randn(1, 9, 12)
    y, _ = enc(x, torch.tensor([9]))
    state = enc.init_state(1)
    steps = []
    for t in range(9):
        y_t, state = enc.step(x[:, t], state)
        steps.append(y_t)
    assert torch.allclose(torch.stack(steps, 1), y, atol=1e-5)


@pytest.mark.parametrize("rnn_type", ["lstm", "gru"])
def test_padded_forward_equals_each_utterance_alone(rnn_type: str) -> None:
    """The causal stack runs on the padded batch: valid outputs equal each utterance encoded
    alone, padding gives what a packed sequence gives (zero states, then the projection), and
    padding gets no gradient."""
    torch.manual_seed(0)
    enc = RecurrentEncoder(12, 16, num_layers=2, rnn_type=rnn_type, projection=8)
    x = torch.randn(3, 11, 12, requires_grad=True)
    lengths = torch.tensor([11, 6, 1])
    y, n = enc(x, lengths)
    assert n.tolist() == [11, 6, 1]
    for b, t in enumerate(lengths.tolist()):
        alone, _ = enc(x[b : b + 1, :t], lengths[b : b + 1])
        assert torch.allclose(y[b, :t], alone[0], atol=1e-6)
        assert torch.equal(y[b, t:], enc.proj.bias.expand(11 - t, 8))  # proj(0) on padding
    y.sum().backward()
    assert not x.grad[1, 6:].any() and not x.grad[2, 1:].any()  # padding gets no gradient
    # and the same as the packed sequence the encoder used to run
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    packed, _ = enc.torch_rnn(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    ref = enc.proj(pad_packed_sequence(packed, batch_first=True, total_length=11)[0])
    torch.testing.assert_close(y, ref, atol=1e-6, rtol=0)


def test_lstm_flops_against_independent_count() -> None:
    enc = RecurrentEncoder(240, 256, num_layers=3)
    # independent count: per layer 4 gates, each an I x H and an H x H matrix-vector product
    # (2 FLOPs per MAC), sum of the two products, two biases, 4 activations, 3 ops for c, 2 ops for h
    def layer(i: int, h: int) -> int:
        return 4 * (2 * i * h + 2 * h * h) + 4 * h + 2 * 4 * h + 4 * h + 3 * h + 2 * h

    assert enc.flops_per_frame() == layer(240, 256) + 2 * layer(256, 256)


def test_conformer_adapter_in_module() -> None:
    enc = ConformerEncoderAdapter(240, d_model=32, num_layers=1, nhead=2, d_ffn=64, context_frames=100)
    m = ASRModule(enc)
    feats = torch.randn(2, 60, 80)
    hyps = m.transcribe(feats, torch.tensor([60, 33]))
    assert len(hyps) == 2 and m.flops_per_frame() > enc.flops_per_frame()


def _datamodule(root: Path) -> SyntheticDataModule:
    return SyntheticDataModule(
        str(root), utterances=120, train_splits=["train"], val_splits=["dev"], test_splits=["test", "test-other"],
        max_batch_seconds=40.0, max_train_utterances=24,
    )


@pytest.mark.parametrize("loss", ["ctc", "rnnt"])
def test_fit_reduces_loss_then_test_and_resume(tiny_corpus: Path, tmp_path: Path, loss: str) -> None:
    pl.seed_everything(0)
    dm = _datamodule(tiny_corpus)
    model = ASRModule(RecurrentEncoder(240, 48, num_layers=1), loss=loss, lr=3e-3)
    ckpt_cb = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", logger=pl.loggers.CSVLogger(tmp_path), callbacks=[ckpt_cb],
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1, use_distributed_sampler=False,
    )
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        before = model.asr_loss(batch)[0].item()
    trainer.fit(model, datamodule=dm)
    with torch.no_grad():
        after = model.asr_loss(batch)[0].item()
    assert after < before
    assert "val/wer" in trainer.callback_metrics and "train/asr_loss" in trainer.callback_metrics
    res = {k: v for d in trainer.test(model, datamodule=dm, verbose=False) for k, v in d.items()}
    assert {"test/test/wer", "test/test/cer", "test/test-other/wer", "test/test-other/cer"} <= set(res)
    assert 0.0 <= res["test/test/wer"]

    # resume from the last checkpoint: one more epoch continues from epoch 2 with the same weights
    last = tmp_path / "ckpt" / "last.ckpt"
    state = torch.load(last, weights_only=False)
    assert state["epoch"] == 1 and state["global_step"] == trainer.global_step
    resumed = ASRModule(RecurrentEncoder(240, 48, num_layers=1), loss=loss, lr=3e-3)
    t2 = pl.Trainer(
        max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=1, enable_checkpointing=False, use_distributed_sampler=False,
    )
    t2.fit(resumed, datamodule=dm, ckpt_path=str(last))
    assert t2.current_epoch == 3 and t2.global_step == 3 * trainer.global_step // 2


def test_each_test_split_is_scored_on_its_own_utterances(tiny_corpus: Path) -> None:
    """Two test dataloaders (test, test-other) log `test/test/*` and `test/test-other/*`, each the
    WER/CER of its own split: checked against jiwer, one utterance at a time."""
    torch.manual_seed(0)
    model = ASRModule(RecurrentEncoder(240, 16, num_layers=1))
    with torch.no_grad():  # untrained, and never blank: emits characters, so each split scores its own errors
        model.head.bias[0] = -100.0
    dm = _datamodule(tiny_corpus)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    per_loader = trainer.test(model, datamodule=dm, verbose=False)  # one dict per dataloader: its split's scores
    assert [set(d) for d in per_loader] == [{"test/test/wer", "test/test/cer"},
                                            {"test/test-other/wer", "test/test-other/cer"}]
    res = {k: v for d in per_loader for k, v in d.items()}
    for split in ("test", "test-other"):
        wer, cer = split_error_rates(model, tiny_corpus, split)
        assert res[f"test/{split}/wer"] == pytest.approx(wer, abs=1e-6)
        assert res[f"test/{split}/cer"] == pytest.approx(cer, abs=1e-6)
    assert res["test/test/cer"] != res["test/test-other/cer"]  # (WER is 1.0 on both: one long word per utterance)


def test_a_test_split_the_corpus_lacks_is_refused_before_training(tiny_corpus: Path, tmp_path: Path) -> None:
    """An older synthetic corpus has no `test-other`: preparing the data (the start of `fit`) stops with what to do."""
    dm = LibriSpeechDataModule(str(tiny_corpus), test_splits=["test", "test-gone"], manifest_dir=str(tmp_path))
    with pytest.raises(CorpusError, match=r"test-gone.* does not exist.*make-corpus .* --overwrite.*test_splits"):
        dm.prepare_data()


def test_realtime_factor_reports_numbers() -> None:
    m = ASRModule(RecurrentEncoder(240, 32, num_layers=1))
    m.train()
    m.head.eval()
    r = realtime_factor(m, [torch.randn(90, 80)], m.frame_ms)
    assert r["frames"] == 30 and r["rtf"] > 0 and r["ms_per_frame"] > 0
    assert m.training and m.encoder.training and not m.head.training  # every mode as it was
    with pytest.raises(ValueError, match="at least one feature matrix"):
        realtime_factor(m, [], m.frame_ms)


def test_cli_checkpoint_loads_without_rebuilding_encoder(tmp_path: Path) -> None:
    from lightning_amortized.cli import ASRLightningCLI

    conf = Path(__file__).resolve().parents[1] / "recipes" / "synthetic" / "conf" / "lstm_ctc.yaml"
    cli = ASRLightningCLI(
        args=["--config", str(conf), "--data.init_args.root", str(tmp_path / "corpus"),
              "--model.encoder.init_args.hidden_size", "24", "--trainer.default_root_dir", str(tmp_path)],
        run=False,
    )
    hparams = dict(cli.model.hparams)
    assert hparams["encoder"]["class_path"].endswith("RecurrentEncoder")  # the config, not the object
    path = tmp_path / "m.ckpt"
    # the keys Lightning's checkpoint loading reads back
    torch.save({"state_dict": cli.model.state_dict(), "hyper_parameters": hparams,
                "pytorch-lightning_version": pl.__version__}, path)
    loaded = ASRModule.load_from_checkpoint(path)
    assert isinstance(loaded.encoder, RecurrentEncoder) and loaded.encoder.hidden_size == 24
    for k, v in cli.model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])


def test_utterances_too_short_for_ctc_are_counted_and_warned() -> None:
    """CTC gives such utterances zero loss (zero_infinity): they used to teach nothing silently."""
    from lightning_amortized.module import ctc_min_frames

    tok = CharTokenizer()
    texts = ["HELLO", "HI"]
    ids = [tok.encode(t) for t in texts]
    tokens = torch.zeros(2, 5, dtype=torch.long)
    for i, t in enumerate(ids):
        tokens[i, : len(t)] = torch.tensor(t)
    lengths = torch.tensor([len(t) for t in ids])
    assert ctc_min_frames(tokens, lengths).tolist() == [6, 2]  # HELLO needs a blank between the Ls
    batch = {"feats": torch.randn(2, 15, 80), "feat_lengths": torch.tensor([15, 15]), "tokens": tokens,
             "token_lengths": lengths, "ids": ["a-1-0", "a-1-1"], "texts": texts}
    m = ASRModule(RecurrentEncoder(240, 8, 1))  # 15 feature frames -> 5 encoder frames of 30 ms
    m.on_train_epoch_start()
    with pytest.warns(UserWarning, match=r"1 utterance\(s\).*fewer encoder frames than CTC needs.*a-1-0"):
        m.training_step(batch, 0)
    m.training_step(batch, 1)  # warned once, counted every time
    assert m._ctc_infeasible == 2


def test_amortization_penalty_settings_reach_the_encoder() -> None:
    from lightning_amortized.nn import AmortizedEncoder, RecurrentEncoder

    torch.manual_seed(0)
    enc = AmortizedEncoder.from_recurrent(RecurrentEncoder(240, 16, 1), fast="lowrank", rank=4, frame_ms=30.0)
    seen = {}
    real = enc.routing_losses
    enc.routing_losses = lambda **kw: seen.update(kw) or real(**kw)
    m = ASRModule(enc, lambda_cost=0.1, lambda_amr=1.0, amr_threshold_ms=45.0, amr_end_weight=2.0, amr_slack_weight=0.5)
    m.encode(torch.randn(2, 30, 80), torch.tensor([30, 21]))
    losses = m._routing_losses()
    assert seen == {"lambda_cost": 0.1, "lambda_amr": 1.0, "threshold_ms": 45.0, "end_weight": 2.0, "slack_weight": 0.5}
    assert torch.isfinite(losses["total"])
    # the end-of-utterance latency term: passed only when on
    seen.clear()
    m = ASRModule(enc, lambda_cost=0.1, lambda_amr=1.0, amr_eou_weight=0.5, amr_eou_factor=1.5)
    m.encode(torch.randn(2, 30, 80), torch.tensor([30, 21]))
    m._routing_losses()
    assert seen["eou_weight"] == 0.5 and seen["eou_factor"] == 1.5
    with pytest.raises(ValueError, match="amr_eou_weight"):
        ASRModule(RecurrentEncoder(240, 16, 1), amr_eou_weight=-1.0)
    with pytest.raises(ValueError, match="amr_eou_factor"):
        ASRModule(RecurrentEncoder(240, 16, 1), amr_eou_factor=0.0)
    with pytest.raises(ValueError, match="amr_end_weight"):
        ASRModule(RecurrentEncoder(240, 16, 1), amr_end_weight=-1.0)
    with pytest.raises(ValueError, match="amr_threshold_ms"):
        ASRModule(RecurrentEncoder(240, 16, 1), amr_threshold_ms=0.0)


def test_branch_losses_train_each_branch_alone_and_keep_the_routing() -> None:
    from lightning_amortized.nn import SharedStateAmortizedEncoder

    torch.manual_seed(0)
    enc = SharedStateAmortizedEncoder(RecurrentEncoder(240, 16, 2), fast="lowrank", rank=4, frame_ms=30.0,
                                      device_flops_per_s=1e6)
    batch = {"feats": torch.randn(2, 60, 80), "feat_lengths": torch.tensor([60, 45]),
             "tokens": torch.randint(1, 29, (2, 5)), "token_lengths": torch.tensor([5, 3]), "ids": ["a", "b"]}
    logged: dict[str, float] = {}

    def step(weight: float) -> torch.Tensor:
        torch.manual_seed(1)  # the same output layer and Gumbel noise for both weights
        m = ASRModule(enc, lambda_cost=0.3, lambda_amr=1.0, branch_loss_weight=weight)
        m.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
        return m.training_step(batch, 0)

    plain = step(0.0)
    assert "train/branch_0_loss" not in logged
    routed = enc.last_routing
    with_branches = step(0.5)
    assert {"train/branch_0_loss", "train/branch_1_loss"} <= logged.keys()
    expected = float(plain) + 0.5 * (logged["train/branch_0_loss"] + logged["train/branch_1_loss"])
    assert float(with_branches) == pytest.approx(expected, rel=1e-5)
    # the routed forward stays what callbacks and routing losses read; the encoder routes again
    assert enc.force_branch is None and enc.last_routing is not None
    assert enc.last_routing.decisions.shape == routed.decisions.shape
    with_branches.backward()
    fast = [p for n, p in enc.named_parameters() if n.startswith("core.fast.")]
    assert fast and all(p.grad is not None for p in fast)
    with pytest.raises(ValueError, match="branch_loss_weight"):
        ASRModule(RecurrentEncoder(240, 16, 1), branch_loss_weight=-1.0)


def test_transcribe_is_deterministic_in_any_mode_and_restores_it(tmp_path) -> None:
    from lightning_amortized.module import load_asr_module

    torch.manual_seed(0)
    m = ASRModule(RecurrentEncoder(240, 16, num_layers=2, dropout=0.5))
    torch.save(m.state_dict(), tmp_path / "m.pt")
    loaded = load_asr_module(tmp_path / "m.pt", dropout=0.5)
    assert loaded.training  # as built: Trainer.fit does not switch modes, and fine-tuning needs its dropout
    x, n = torch.randn(2, 30, 80), torch.tensor([30, 21])
    loaded.head.eval()  # a submodule's own mode survives transcribe
    first = loaded.transcribe(x, n)
    assert all(loaded.transcribe(x, n) == first for _ in range(3))
    assert loaded.training and loaded.encoder.training and not loaded.head.training
    assert loaded.eval().transcribe(x.double(), n) == first  # float64 features are cast


def test_transcribe_refuses_what_is_not_features_and_frame_counts() -> None:
    m = ASRModule(RecurrentEncoder(240, 16, num_layers=1))
    x = torch.randn(2, 30, 80)
    for feats, lengths, match in ((torch.randn(2, 30, 40), torch.tensor([30, 20]), r"shape \(B, T >= 1, 80\)"),
                                  (torch.randn(30, 80), torch.tensor([30]), r"shape \(B, T >= 1, 80\)"),
                                  (torch.randn(2, 0, 80), torch.tensor([0, 0]), r"shape \(B, T >= 1, 80\)"),
                                  (x, [30, 20], "integer tensor of frame counts"),
                                  (x, torch.tensor([1.0, 0.5]), "integer tensor of frame counts"),
                                  (x, torch.tensor([31, 2]), r"in \[1, 30\]"),
                                  (x, torch.tensor([30, 0]), r"in \[1, 30\]")):
        with pytest.raises(ValueError, match=match):
            m.transcribe(feats, lengths)
    with pytest.raises(ValueError, match=r"`vocab_size` to be 29"):
        ASRModule(RecurrentEncoder(240, 16, num_layers=1), vocab_size=40)


def test_predict_returns_each_test_utterances_transcript(tiny_corpus: Path) -> None:
    torch.manual_seed(0)
    model = ASRModule(RecurrentEncoder(240, 16, num_layers=1))
    with torch.no_grad():
        model.head.bias[0] = -100.0  # never blank: non-empty transcripts
    dm = _datamodule(tiny_corpus)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    per_loader = trainer.predict(model, datamodule=dm)  # one list of batches per test split
    assert len(per_loader) == 2
    for split, batches in zip(("test", "test-other"), per_loader):
        rows = [r for batch in batches for r in batch]
        ids = {line.split()[0] for t in (tiny_corpus / split).rglob("*.trans.txt") for line in t.read_text().splitlines()}
        assert {r["id"] for r in rows} == ids and all(r["text"] for r in rows)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()[0]))
    assert [r["text"] for r in model.predict_step(batch, 0)] == model.transcribe(batch["feats"], batch["feat_lengths"])


def test_a_plain_state_dict_of_a_non_default_model_loads_with_its_hparams(tmp_path) -> None:
    from lightning_amortized.module import load_asr_module

    torch.manual_seed(0)
    m = ASRModule(RecurrentEncoder(24, 16, num_layers=2), n_mels=8, stack=3).eval()
    torch.save(m.state_dict(), tmp_path / "m.pt")
    with pytest.raises(ValueError, match="plain state dict without hyper-parameters.*n_mels="):
        load_asr_module(tmp_path / "m.pt")
    loaded = load_asr_module(tmp_path / "m.pt", n_mels=8, stack=3)
    x, n = torch.randn(1, 30, 8), torch.tensor([30])
    assert loaded.transcribe(x, n) == m.transcribe(x, n)


@pytest.mark.parametrize("independent", [False, True])
def test_an_amnets_routing_settings_survive_a_checkpoint(tmp_path: Path, independent: bool) -> None:
    """The simulated device, latency guard, forced branch and the arbitrator's temperature are attributes,
    not tensors: ASRModule checkpoints carry them, so a reloaded AmNet routes as the saved one did."""
    from lightning_amortized.nn import AmortizedEncoder, SharedStateAmortizedEncoder

    def build() -> torch.nn.Module:
        if independent:
            return AmortizedEncoder(RecurrentEncoder(240, 8, 1), RecurrentEncoder(240, 16, 1), projection=16)
        return SharedStateAmortizedEncoder(RecurrentEncoder(240, 16, 1), rank=2)

    model = ASRModule(build())
    enc = model.encoder
    enc.set_device(2e6)
    enc.latency_guard = 3.0
    enc.arbitrator.temperature = 0.05
    enc.arbitrator.straight_through = True
    path = _resave(model, tmp_path / "amnet.ckpt")
    loaded = ASRModule.load_from_checkpoint(path, encoder=build(), weights_only=True)
    assert loaded.encoder.routing_settings() == enc.routing_settings()
    assert loaded.encoder.device_flops_per_s == 2e6 and loaded.encoder.latency_guard == 3.0
    x, lengths = torch.randn(2, 30, 240), torch.tensor([30, 21])
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model.encoder(x, lengths)[0], loaded.encoder(x, lengths)[0])
        assert torch.equal(model.encoder.last_routing.gates, loaded.encoder.last_routing.gates)

    enc.force_branch = 1  # a forced branch comes back too; impossible settings are refused whole
    assert ASRModule.load_from_checkpoint(_resave(model, path), encoder=build()).encoder.force_branch == 1
    with pytest.raises(ValueError, match="force_branch"):
        build().load_routing_settings({"force_branch": 5, "device_flops_per_s": 1e6})
    other = build()
    with pytest.raises(ValueError, match="temperature"):
        other.load_routing_settings({"temperature": -1.0, "device_flops_per_s": 1e6})
    assert other.device_flops_per_s != 1e6  # nothing applied


def _resave(model: ASRModule, path: Path) -> Path:
    """``model`` saved as Lightning does (its ``on_save_checkpoint`` included) at ``path``."""
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                  "pytorch-lightning_version": pl.__version__}
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


def test_loading_a_python_built_module_without_its_encoder_says_what_to_pass(tmp_path: Path) -> None:
    model = ASRModule(RecurrentEncoder(240, 8, 1))
    path = _resave(model, tmp_path / "m.ckpt")
    with pytest.raises(TypeError, match=r"pass it, built as it was, e.g. ASRModule.load_from_checkpoint\(path, encoder="):
        ASRModule.load_from_checkpoint(path)
    loaded = ASRModule.load_from_checkpoint(path, encoder=RecurrentEncoder(240, 8, 1))
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(TypeError, match="cannot be called on an instance"):
        loaded.load_from_checkpoint(path, encoder=RecurrentEncoder(240, 8, 1))
