"""Subword output units: SentencePiece tokenizer, its CLI, and a module that trains, saves and loads with it."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lightning_amortized.cli import main
from lightning_amortized.data import SyntheticDataModule
from lightning_amortized.data.tokenizer import CharTokenizer, SentencePieceTokenizer, train_sentencepiece
from lightning_amortized.module import ASRModule, load_asr_module
from lightning_amortized.nn import RecurrentEncoder

TEXTS = ["SET A TIMER FOR TEN MINUTES", "SET AN ALARM FOR SEVEN", "CALL MOM", "WHAT'S THE WEATHER IN PARIS"] * 30


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_sentencepiece(TEXTS, tmp_path_factory.mktemp("sp") / "sp.model", vocab_size=40)


def test_round_trip_blank_and_ctc_collapse(sp_model: Path) -> None:
    tok = SentencePieceTokenizer(sp_model)
    for text in set(TEXTS):
        ids = tok.encode(text.lower())  # normalised like transcripts
        assert 0 not in ids and max(ids) < len(tok)
        assert tok.decode(ids) == text
        # a CTC path: blanks between, repeats merged
        path = torch.tensor([x for i in ids for x in (i, i, 0)])
        assert tok.ctc_greedy(path) == text
    assert len(tok) == len(tok.vocabulary) + 1
    assert "".join(tok.vocabulary[i - 1] for i in tok.encode("CALL MOM")).split() == ["CALL", "MOM"]
    # subwords are fewer symbols than characters: what leaves more CTC frames blank
    chars = CharTokenizer()
    assert sum(len(tok.encode(t)) for t in TEXTS) < 0.75 * sum(len(chars.encode(t)) for t in TEXTS)


def test_a_predicted_unknown_piece_decodes_to_nothing(sp_model: Path) -> None:
    """A CTC model can emit the unknown piece (id ``unk + 1``); hypotheses read "<unk>" in them."""
    tok = SentencePieceTokenizer(sp_model)
    unk = tok._sp.unk_id() + 1
    ids = tok.encode("CALL MOM")
    assert tok.decode([unk, *ids, unk]) == "CALL MOM"
    assert tok.ctc_greedy(torch.tensor([unk, 0, *ids, unk])) == "CALL MOM"
    assert "<unk>" not in "".join(tok.vocabulary)  # the device runtime joins vocabulary entries


def test_training_is_deterministic_and_checks_arguments(sp_model: Path, tmp_path: Path) -> None:
    again = train_sentencepiece(TEXTS, tmp_path / "again.model", vocab_size=40)
    assert again.read_bytes() == sp_model.read_bytes()
    with pytest.raises(ValueError, match="`vocab_size` to be an int of at least"):
        train_sentencepiece(TEXTS, tmp_path / "x.model", vocab_size=5)
    with pytest.raises(ValueError, match="`texts`"):
        train_sentencepiece(["", "  "], tmp_path / "x.model")
    with pytest.raises(ValueError, match="`model_type`"):
        train_sentencepiece(TEXTS, tmp_path / "x.model", model_type="word")


def test_bad_inputs_are_explained(sp_model: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train-tokenizer"):
        SentencePieceTokenizer(tmp_path / "missing.model")
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        SentencePieceTokenizer(junk)
    tok = SentencePieceTokenizer(sp_model)
    with pytest.raises(ValueError, match="in a.trans.txt 'QUIZ' .*never saw"):
        tok.encode("QUIZ", where="a.trans.txt")  # Q and Z never occur in TEXTS
    with pytest.raises(ValueError, match="`vocab_size` to match"):
        ASRModule(RecurrentEncoder(240, 16, num_layers=1), vocab_size=100, tokenizer=str(sp_model))


def test_cli_trains_on_a_corpus(tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "corpus.model"
    assert main(["train-tokenizer", str(tiny_corpus), "--vocab-size", "60", "--out", str(out)]) == 0
    assert "pieces from" in capsys.readouterr().out and SentencePieceTokenizer(out)
    assert main(["train-tokenizer", str(tiny_corpus), "--splits", "nope", "--out", str(tmp_path / "b.model")]) == 2
    assert capsys.readouterr().err.startswith("lightning-amortized train-tokenizer: error: Split folder")
    assert main(["train-tokenizer", str(tiny_corpus), "--out", str(tmp_path)]) == 2
    assert "is a folder; pass the .model file" in capsys.readouterr().err
    # an existing model is not replaced without --force, and stays as it was
    before = out.read_bytes()
    assert main(["train-tokenizer", str(tiny_corpus), "--vocab-size", "50", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["train-tokenizer", str(tiny_corpus), "--vocab-size", "50", "--out", str(out), "--force"]) == 0
    assert len(SentencePieceTokenizer(out)) == 51 and out.read_bytes() != before  # 50 pieces + the blank


def test_module_fits_with_subwords_and_loads_without_the_file(tiny_corpus: Path, tmp_path: Path) -> None:
    model_file = tmp_path / "units.model"
    assert main(["train-tokenizer", str(tiny_corpus), "--vocab-size", "60", "--out", str(model_file)]) == 0
    pl.seed_everything(0)
    dm = SyntheticDataModule(str(tiny_corpus), utterances=120, max_batch_seconds=40.0, max_train_utterances=24,
                             tokenizer=str(model_file))
    model = ASRModule(RecurrentEncoder(240, 32, num_layers=1), lr=3e-3, tokenizer=str(model_file))
    assert model.head.out_features == len(dm.tokenizer) == len(SentencePieceTokenizer(model_file))
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, callbacks=[ckpt], enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=1, use_distributed_sampler=False)
    trainer.fit(model, datamodule=dm)
    # the checkpoint carries the SentencePiece model: it loads after the file is gone
    data = model_file.read_bytes()
    model_file.unlink()
    loaded = load_asr_module(tmp_path / "ckpt" / "last.ckpt")
    assert loaded.tokenizer.model_bytes == data and loaded.tokenizer.vocabulary == model.tokenizer.vocabulary
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values()):
        torch.testing.assert_close(a, b)
    from_ckpt = lambda p: ASRModule.load_from_checkpoint(p, encoder=RecurrentEncoder(240, 32, num_layers=1))  # noqa: E731
    assert from_ckpt(tmp_path / "ckpt" / "last.ckpt").tokenizer.model_bytes == data
    # the file retrained at the same path (other pieces): the checkpoint's own model still wins, with a warning
    train_sentencepiece(TEXTS, model_file, vocab_size=40)
    assert model_file.read_bytes() != data
    for load in (load_asr_module, from_ckpt):
        with pytest.warns(UserWarning, match="not the one .* was trained with"):
            again = load(tmp_path / "ckpt" / "last.ckpt")
        assert again.tokenizer.model_bytes == data and again.tokenizer.vocabulary == model.tokenizer.vocabulary


def test_mismatched_tokenizers_are_refused_at_fit(sp_model: Path, tiny_corpus: Path) -> None:
    dm = SyntheticDataModule(str(tiny_corpus), utterances=120, max_batch_seconds=40.0, max_train_utterances=8)
    model = ASRModule(RecurrentEncoder(240, 16, num_layers=1), tokenizer=str(sp_model))
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, use_distributed_sampler=False)
    with pytest.raises(ValueError, match="data.init_args.tokenizer and model.init_args.tokenizer"):
        trainer.fit(model, datamodule=dm)
    for run in (trainer.validate, trainer.test):  # not only fit: a loss over another head's symbols means nothing
        with pytest.raises(ValueError, match="data.init_args.tokenizer and model.init_args.tokenizer"):
            run(model, datamodule=dm)


def test_byte_fallback_models_are_refused(tmp_path: Path) -> None:
    """Byte pieces would reach transcripts as literal '<0xC3>' text and let unseen characters through."""
    import sentencepiece as spm

    text = tmp_path / "text.txt"
    text.write_text("\n".join(TEXTS) + "\n")
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(tmp_path / "bf"), vocab_size=285,
                                   byte_fallback=True, unk_id=0, bos_id=-1, eos_id=-1, minloglevel=2)
    with pytest.raises(ValueError, match="byte fallback .* Retrain it without --byte_fallback"):
        SentencePieceTokenizer(tmp_path / "bf.model")


def test_a_lower_case_alphabet_keeps_the_texts_case() -> None:
    tok = CharTokenizer(" 'abcdefghijklmnopqrstuvwxyz")
    assert tok.decode(tok.encode("hello  world")) == "hello world"
    with pytest.raises(ValueError, match="outside the alphabet"):
        tok.encode("Hello")
    assert CharTokenizer().normalize("it's  a Timer") == "IT'S A TIMER"


def test_reference_texts_are_scored_as_the_tokens_spell_them(tmp_path) -> None:
    """A lower-case transcript line scored 100 % WER against a perfect (upper-case) hypothesis."""
    from lightning_amortized.data import SpeechDataset
    from lightning_amortized.data.prepare import Utterance

    utt = Utterance(id="u1", path=str(tmp_path / "u1.flac"), duration=1.0, words="it's  a Timer", sample_rate=16000,
                    speaker="1")
    ds = SpeechDataset([utt], CharTokenizer())
    assert ds.tokenizer.decode(ds.tokens[0]) == "IT'S A TIMER"
    ds._feats[0] = torch.zeros(3, 80)  # no audio needed: the cached features are returned
    ds.features = object()
    assert ds[0]["text"] == "IT'S A TIMER"
