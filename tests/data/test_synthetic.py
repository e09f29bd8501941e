"""Tests of the synthetic LibriSpeech-layout corpus, its templates and the eSpeak wrapper."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from lightning_amortized.data import lexicon, lexicon_draw, plan, templates
from lightning_amortized.data.espeak import EspeakError, EspeakSynthesizer
from lightning_amortized.data.synthetic import SPLITS, main, make_corpus, split_sizes

N = 60
UPDATES = range(1, templates.NUM_UPDATES + 1)
FLAC_NAME = re.compile(r"^(\d+)-(\d+)-(\d{4})\.flac$")
TRANS_LINE = re.compile(r"^(\d+-\d+-\d{4}) ([A-Z']+(?: [A-Z']+)*)$")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("corpus_w2")
    info = make_corpus(root, N, seed=0, num_workers=2, show_progress=False)
    return root, info


@pytest.fixture(scope="module")
def corpus_w1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus_w1")
    make_corpus(root, N, seed=0, num_workers=1, show_progress=False)
    return root


def _transcripts(root: Path, split: str) -> dict[str, str]:
    out = {}
    for trans in sorted((root / split).glob("*/*/*.trans.txt")):
        for line in trans.read_text().splitlines():
            match = TRANS_LINE.match(line)
            assert match, f"bad transcript line {line!r} in {trans}"
            out[match.group(1)] = match.group(2)
    return out


def _has_phrase(text: str, phrase: str) -> bool:
    return re.search(rf"(^| ){re.escape(phrase)}( |$)", text) is not None


# --------------------------------------------------------------------------- splits
def test_split_sizes_hand_computed() -> None:
    sizes = split_sizes(8000)
    # 4 % dev, 8 % test and test-other, 3 % + 3.5 % per update, the rest (47.5 %) train
    assert (sizes["train"], sizes["dev"], sizes["test"], sizes["test-other"]) == (3800, 320, 640, 640)
    for k in UPDATES:
        assert (sizes[f"update-{k}"], sizes[f"update-{k}-test"]) == (240, 280)
    small = split_sizes(N)
    assert sum(small.values()) == N and list(small) == list(SPLITS)
    assert min(small[f"update-{k}"] for k in UPDATES) >= 3
    assert min(small[f"update-{k}-test"] for k in UPDATES) >= 2


def test_train_utterances_enlarges_train_only_and_keeps_its_first_utterances(tmp_path: Path) -> None:
    sizes, larger = split_sizes(8000), split_sizes(8000, train_utterances=16000)
    assert larger["train"] == 16000 and {s: n for s, n in larger.items() if s != "train"} == {
        s: n for s, n in sizes.items() if s != "train"
    }
    _, jobs, labels = plan._plan(tmp_path, N, 0, None)
    _, more_jobs, more_labels = plan._plan(tmp_path, N, 0, None, train_utterances=3 * split_sizes(N)["train"])
    train, more_train = ([j for j in js if j.split == "train"] for js in (jobs, more_jobs))
    assert len(more_train) == 3 * len(train) and more_train[: len(train)] == train
    assert [j for j in more_jobs if j.split != "train"] == [j for j in jobs if j.split != "train"]
    assert {j.voice for j in more_train} == {j.voice for j in train}  # same speakers, more of each
    assert len({labels[j.id]["text"] for j in train}) < len({more_labels[j.id]["text"] for j in more_train})
    for bad in (5, 2.5, True):
        with pytest.raises(ValueError, match="`train_utterances`"):
            split_sizes(N, train_utterances=bad)  # type: ignore[arg-type]


def test_train_utterances_is_part_of_the_corpus(tmp_path: Path) -> None:
    info = make_corpus(tmp_path, 50, seed=0, num_workers=1, show_progress=False, train_utterances=30)
    assert info["train_utterances"] == 30 and info["splits"]["train"]["utterances"] == 30
    assert len(list(tmp_path.glob("train/*/*/*.flac"))) == 30
    with pytest.raises(ValueError, match="train_utterances=30"):
        make_corpus(tmp_path, 50, seed=1, num_workers=1, show_progress=False, train_utterances=30)  # another seed
    with pytest.warns(UserWarning, match="regenerating it with train_utterances=None"):
        info = make_corpus(tmp_path, 50, seed=0, num_workers=1, show_progress=False)
    assert info["train_utterances"] is None
    assert len(list(tmp_path.glob("train/*/*/*.flac"))) == info["splits"]["train"]["utterances"] == split_sizes(50)["train"]


# --------------------------------------------------------------------------- layout
def test_layout_is_librispeech(corpus: tuple[Path, dict]) -> None:
    root, info = corpus
    assert sorted(p.name for p in root.iterdir()) == sorted([*SPLITS, "corpus.json"])
    total = 0
    for split in SPLITS:
        assert {p.name for p in (root / split).iterdir() if p.is_file()} == {"slu.jsonl"}
        for spk_dir in (root / split).iterdir():
            if spk_dir.is_file():
                continue
            assert spk_dir.name.isdigit()
            for chapter_dir in spk_dir.iterdir():
                assert chapter_dir.name.isdigit()
                names = sorted(p.name for p in chapter_dir.iterdir())
                trans = f"{spk_dir.name}-{chapter_dir.name}.trans.txt"
                assert trans in names
                flacs = [n for n in names if n != trans]
                for name in flacs:
                    m = FLAC_NAME.match(name)
                    assert m and m.group(1) == spk_dir.name and m.group(2) == chapter_dir.name
                ids = [line.split(" ", 1)[0] for line in (chapter_dir / trans).read_text().splitlines()]
                assert ids == sorted(n[:-5] for n in flacs)
                # utterance numbers are consecutive from 0000 within a chapter
                assert [int(i.rsplit("-", 1)[1]) for i in ids] == list(range(len(ids)))
                total += len(flacs)
        assert len(_transcripts(root, split)) == info["splits"][split]["utterances"]
    assert total == N == info["utterances"]


def test_transcripts_use_librispeech_alphabet(corpus: tuple[Path, dict]) -> None:
    root, _ = corpus
    for split in SPLITS:
        for text in _transcripts(root, split).values():
            assert text and templates.is_valid_transcript(text), text


def test_audio_is_16k_mono_flac_with_speech(corpus: tuple[Path, dict]) -> None:
    root, info = corpus
    assert info["sample_rate"] == 16000
    for split in SPLITS:
        frames = 0
        for path in sorted((root / split).glob("*/*/*.flac")):
            meta = sf.info(str(path))
            assert (meta.samplerate, meta.channels, meta.subtype) == (16000, 1, "PCM_16")
            audio, _ = sf.read(str(path), dtype="float32")
            assert 0.5 < audio.shape[0] / 16000 < 15.0
            assert 0.01 < float(np.sqrt(np.mean(audio**2))) and float(np.abs(audio).max()) < 0.9
            frames += audio.shape[0]
        assert info["splits"][split]["hours"] == pytest.approx(frames / 16000 / 3600, abs=1e-5)


# --------------------------------------------------------------------------- determinism
def test_same_seed_is_bit_identical_for_any_worker_count(
    corpus: tuple[Path, dict], corpus_w1: Path
) -> None:
    root, _ = corpus
    files_a = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(corpus_w1) for p in corpus_w1.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (root / rel).read_bytes() == (corpus_w1 / rel).read_bytes(), rel


def test_different_seed_differs(corpus: tuple[Path, dict], tmp_path: Path) -> None:
    root, info = corpus
    other = make_corpus(tmp_path, N, seed=1, show_progress=False)
    assert other["speakers"] != info["speakers"]
    texts_a = sorted(_transcripts(root, "train").values())
    texts_b = sorted(_transcripts(tmp_path, "train").values())
    assert texts_a != texts_b


def test_synthesis_does_not_depend_on_previous_calls() -> None:
    tts = EspeakSynthesizer()
    assert tts is EspeakSynthesizer()
    first = tts.synthesize("set a timer for ten minutes", "en-us+f3", rate=170, seed=3)
    tts.synthesize("call mom", "en-gb-scotland+m2", rate=200, pitch=30, seed=9)
    again = tts.synthesize("set a timer for ten minutes", "en-us+f3", rate=170, seed=3)
    assert first.dtype == np.float32 and tts.sample_rate == 22050
    np.testing.assert_array_equal(first, again)


def test_every_variant_is_deterministic() -> None:
    # Klatt variants with breath noise (Reed, caleb) draw from libc's rand(): seeded per call
    tts = EspeakSynthesizer()
    variants = list(plan.variant_pool(False) + plan.variant_pool(True))
    first = {v: tts.synthesize("call my sister", f"en-us+{v}", seed=5) for v in variants}
    for v in reversed(variants):
        np.testing.assert_array_equal(tts.synthesize("call my sister", f"en-us+{v}", seed=5), first[v], err_msg=v)


# --------------------------------------------------------------------------- speakers
def test_speaker_sets(corpus: tuple[Path, dict]) -> None:
    root, info = corpus
    spk = {s: set(info["splits"][s]["speakers"]) for s in SPLITS}
    homes = ("train", "dev", "test", "test-other")
    assert all(spk[h] for h in homes)
    for i, a in enumerate(homes):
        for b in homes[i + 1:]:
            assert not spk[a] & spk[b], (a, b)
    for k in UPDATES:
        assert spk[f"update-{k}"] <= spk["train"]
        assert spk[f"update-{k}-test"] <= spk["test"]
    for split in SPLITS:
        on_disk = {int(p.name) for p in (root / split).iterdir() if p.is_dir()}
        assert on_disk == spk[split]
    # each speaker is a distinct eSpeak voice+variant, so test voices are unseen in train
    voices = {sid: (s["voice"], s["variant"]) for sid, s in info["speakers"].items()}
    assert len(set(voices.values())) == len(voices)
    assert {int(i) for i in info["speakers"]} == spk["train"] | spk["dev"] | spk["test"] | spk["test-other"]
    for sid, s in info["speakers"].items():
        assert int(sid) in spk[s["split"]]
        assert 0 <= s["pitch"] <= 100 and 80 <= s["rate"] <= 450
        assert 20500 <= s["warp_rate"] <= 23500
        # test-other's variants (and its extra accent) are never heard elsewhere
        held_out = s["split"] == "test-other"
        assert (s["variant"] in plan.OTHER_VARIANTS) == held_out
        if not held_out:
            assert s["voice"] in plan.VOICES and s["voice"] not in plan.OTHER_VOICES
    assert info["held_out"]["variants"] == list(plan.OTHER_VARIANTS)
    assert info["voices"] == "core"
    core = plan.VOICE_SETS["core"]
    assert {s["variant"] for s in info["speakers"].values() if s["split"] != "test-other"} <= set(core.variants)


def test_wide_voice_set_and_bad_voice_set(tmp_path: Path) -> None:
    speakers = plan._make_speakers(8000, 0, plan.voice_set("wide"))
    variants = {s.variant for group in speakers.values() for s in group if s.split != "test-other"}
    assert len(variants) > 40 and not variants & set(plan.OTHER_VARIANTS)
    assert len(speakers["train"]) == 200
    core = plan._make_speakers(8000, 0, plan.voice_set("core"))
    assert [len(core[h]) for h in ("train", "dev", "test", "test-other")] == [80, 10, 16, 16]
    with pytest.raises(ValueError, match="`voices` to be one of"):
        make_corpus(tmp_path, N, voices="loud", show_progress=False)


def test_accent_lines_change_the_audio_deterministically_and_leave_other_voices_alone() -> None:
    tts = EspeakSynthesizer()
    text = "the three brothers think that this is a big house"
    plain = tts.synthesize(text, "en-us+m3", seed=2)
    lines = plan.accent_lines(("th-fronting", "h-dropping"))
    accented = tts.synthesize(text, "en-us+m3", seed=2, voice_lines=lines)
    assert accented.shape != plain.shape or np.abs(accented - plain).max() > 0
    np.testing.assert_array_equal(tts.synthesize(text, "en-us+m3", seed=2, voice_lines=lines), accented)
    # the voice without lines is unchanged once custom variants exist (they live in a private data copy)
    np.testing.assert_array_equal(tts.synthesize(text, "en-us+m3", seed=2), plain)
    for bad in (["replace 00 T f\nname x"], [""], ["replace 00 T \u00f0"]):
        with pytest.raises(ValueError, match="voice_lines"):
            tts.synthesize(text, "en-us+m3", voice_lines=bad)
    with pytest.raises(ValueError, match="Unknown accent processes"):
        plan.accent_lines(("th-stopping",))


def test_every_accent_process_replaces_known_phonemes() -> None:
    # eSpeak NG drops a phoneme replaced by an unknown name: each line must differ from "-> NULL"
    tts = EspeakSynthesizer()
    text = ("the thin thing that they bought, she hit the hat and cut the cup; my face goes home, "
            "he fixed a big dog with a bad bag in a cab, his zoo has five vans, where was the wolf's hood, "
            "rolled gold, we all feel well")
    plain = tts.synthesize(text, "en+m1")
    for name, (_, lines) in plan.ACCENT_PROCESSES.items():
        for line in lines:
            flags, src, dst = line.split()[1:]
            out = tts.synthesize(text, "en+m1", voice_lines=[line])
            assert out.shape != plain.shape or np.abs(out - plain).max() > 0, f"{name}: {line} changes nothing"
            if dst != "NULL":
                dropped = tts.synthesize(text, "en+m1", voice_lines=[f"replace {flags} {src} NULL"])
                assert out.shape != dropped.shape or np.abs(out - dropped).max() > 0, f"{name}: {dst!r} unknown"


def _speakers_as_core(voices: str) -> dict[str, list]:
    """The 8,000-utterance speakers of ``voices``, checked to be ``core``'s but for voice lines."""
    core = plan._make_speakers(8000, 0, plan.voice_set("core"))
    other = plan._make_speakers(8000, 0, plan.voice_set(voices))
    for split in core:
        assert [(s.id, s.voice, s.variant, s.pitch, s.rate, s.warp_rate) for s in core[split]] == [
            (s.id, s.voice, s.variant, s.pitch, s.rate, s.warp_rate) for s in other[split]]
        assert all(not s.accent and not s.formants for s in core[split])
    return other


def test_core_accents_changes_only_training_speakers_accents() -> None:
    from lightning_amortized.data.espeak import _loader_paths

    accents = _speakers_as_core("core-accents")
    assert sum(bool(s.accent) for s in accents["train"]) == 40
    assert all(not s.accent for split in ("dev", "test", "test-other") for s in accents[split])
    for s in accents["train"]:
        slots = [plan.ACCENT_PROCESSES[a][0] for a in s.accent]
        assert (not s.accent or 2 <= len(s.accent) <= 4) and len(set(slots)) == len(slots)
    # the held-out accent's own replacements are never used in training
    en029 = (Path(_loader_paths()[1]) / "lang" / "gmw" / "en-029").read_text()
    held = {tuple(line.split()[2:4]) for line in en029.splitlines() if line.startswith("replace")}
    assert held and not held & {tuple(line.split()[2:4]) for _, ls in plan.ACCENT_PROCESSES.values() for line in ls}


def test_core_formants_scales_only_training_speakers_formants() -> None:
    shifted = _speakers_as_core("core-formants")
    assert all(len(s.formants) == 3 and all(90 <= f <= 110 for f in s.formants) for s in shifted["train"])
    assert len({s.formants for s in shifted["train"]}) > 40
    assert all(not s.formants for split in ("dev", "test", "test-other") for s in shifted[split])
    # the variant's own formant line is kept but for its frequency (f1: "formant 1 120 80 180")
    assert plan.formant_lines("f1", (95, 100, 110))[0] == "formant 1 114 80 180"
    assert plan.formant_lines("klatt", (110,)) == ("formant 1 110 100 100",)  # no line of its own
    tts = EspeakSynthesizer()
    plain = tts.synthesize("we see the blue boat", "en-us+f1", seed=1)
    lines = plan.formant_lines("f1", (90, 110, 100))
    moved = tts.synthesize("we see the blue boat", "en-us+f1", seed=1, voice_lines=lines)
    assert plain.shape != moved.shape or np.abs(plain - moved).max() > 0


def test_core_accents_corpus_speaks_the_accents_with_any_worker_count(tmp_path: Path) -> None:
    import tempfile
    from dataclasses import replace

    from lightning_amortized.data.render import _render

    prefix = "lightning-amortized-espeak-data-"
    before = {p.name for p in Path(tempfile.gettempdir()).glob(prefix + "*")}
    info = make_corpus(tmp_path / "one", N, voices="core-accents", show_progress=False, num_workers=1)
    make_corpus(tmp_path / "two", N, voices="core-accents", show_progress=False, num_workers=2)
    for a in sorted((tmp_path / "one").rglob("*.flac")):
        assert a.read_bytes() == (tmp_path / "two" / a.relative_to(tmp_path / "one")).read_bytes(), a
    # workers write no eSpeak data copies of their own (forked workers would leave them behind)
    own = EspeakSynthesizer().data_path
    assert {p.name for p in Path(tempfile.gettempdir()).glob(prefix + "*")} - before <= {Path(own).name}
    accented = {sid: s["accent"] for sid, s in info["speakers"].items() if "accent" in s}
    assert accented and all(info["speakers"][sid]["split"] == "train" for sid in accented)
    assert info["voices"] == "core-accents" and "accents_version" not in info  # version 1 is not written
    # the files really carry the accent: re-rendered without its lines, an accented utterance differs
    _, jobs, _ = plan._plan(tmp_path / "one", N, 0, (20.0, 40.0), "core-accents")
    differs = []
    for job in [j for j in jobs if j.voice_lines and j.split == "train"][:6]:  # a sentence may lack every phoneme
        written = Path(job.path).read_bytes()
        _render(replace(job, path=str(tmp_path / "again.flac")))
        _render(replace(job, path=str(tmp_path / "plain.flac"), voice_lines=()))
        assert (tmp_path / "again.flac").read_bytes() == written
        differs.append((tmp_path / "plain.flac").read_bytes() != written)
    assert sum(differs) >= 3, differs


def test_custom_variant_refuses_bad_lines_and_names_its_content() -> None:
    tts = EspeakSynthesizer()
    a = tts.custom_variant("en-us+m3", ["replace 00 z s"])
    assert a.startswith("en-us+la-") and tts.custom_variant("en-us+m3", iter(["replace 00 z s"])) == a
    assert tts.custom_variant("en+m3", ["replace 00 z s"]) == "en" + a[len("en-us"):]  # the variant, not the accent
    assert tts.custom_variant("en-us+m4", ["replace 00 z s"]) != a
    for bad, match in (("replace 00 z s", "string"), ([], "at least one line")):
        with pytest.raises(ValueError, match=match):
            tts.custom_variant("en-us+m3", bad)
    with pytest.raises(EspeakError, match="Unknown eSpeak NG variant"):
        tts.custom_variant("en-us+m99", ["replace 00 z s"])


def test_accent_processes_are_pinned_to_their_version() -> None:
    import hashlib

    digest = hashlib.sha256(json.dumps(plan.ACCENT_PROCESSES, sort_keys=True).encode()).hexdigest()[:16]
    assert (plan.ACCENTS_VERSION, digest) == (1, "a5c55edf1f0c2875"), (
        "ACCENT_PROCESSES changed: bump plan.ACCENTS_VERSION (corpora made with the old processes must be "
        f"told apart) and pin the new digest {digest}")


def test_variant_pools_cover_the_wheel_and_are_disjoint() -> None:
    from lightning_amortized.data.espeak import available_variants

    seen, held = set(plan.variant_pool(False)), set(plan.variant_pool(True))
    assert not seen & held and {"klatt4", "klatt5", "klatt6"} <= held
    assert {"klatt", "klatt2", "klatt3", "m1", "f5", "Reed"} <= seen
    effects = set(plan.EFFECT_VARIANTS)
    assert not effects & (seen | held) and {"whisper", "robosoft", "croak"} <= effects
    assert seen | held | effects == {v for v in available_variants() if " " not in v}
    assert len(seen) >= 60


# --------------------------------------------------------------------------- entities
def test_update_entities_never_in_base_data() -> None:
    base_texts = [v for vs in templates.BASE_ENTITIES.values() for v in vs]
    base_texts += [t.pattern for t in templates.TEMPLATES] + list(templates.GENERAL_SENTENCES)
    seen: set[str] = set()
    for k in UPDATES:
        new = [v for vs in templates.update_entities(k).values() for v in vs]
        assert {"athlete", "city", "product"} <= set(templates.update_entities(k))
        assert not seen & set(new)
        seen |= set(new)
        for phrase in new:
            assert templates.is_valid_transcript(phrase)
            assert not any(_has_phrase(text, phrase) for text in base_texts), phrase


def test_update_splits_hold_new_entities(corpus: tuple[Path, dict]) -> None:
    root, info = corpus
    train_texts = list(_transcripts(root, "train").values())
    for k in UPDATES:
        new = [v for vs in info["entities"][f"update-{k}"].values() for v in vs]
        assert not any(_has_phrase(t, p) for t in train_texts for p in new)
        for split in (f"update-{k}", f"update-{k}-test"):
            rows = [json.loads(line) for line in (root / split / "slu.jsonl").read_text().splitlines()]
            flagged = [r for r in rows if r["entities_new"]]
            # 60 % pattern T,T,F,T,F: 4 utterances -> 3 new, 2 -> 2 new
            assert len(flagged) == sum((True, True, False, True, False)[i % 5] for i in range(len(rows)))
            assert info["splits"][split]["new_entity_utterances"] == len(flagged)
            for row in rows:
                has_new = any(_has_phrase(row["text"], p) for p in new)
                assert has_new == row["entities_new"], row


def test_templates_spell_numbers_and_keep_vocabulary_learnable() -> None:
    spelled = [templates.spell_number(n) for n in (0, 13, 40, 99, 105, 1000, 21021)]
    assert spelled == [
        "ZERO", "THIRTEEN", "FORTY", "NINETY NINE", "ONE HUNDRED FIVE", "ONE THOUSAND",
        "TWENTY ONE THOUSAND TWENTY ONE",
    ]
    with pytest.raises(ValueError, match="`n`"):
        templates.spell_number(-1)
    for not_an_int in (3.7, True, "3"):
        with pytest.raises(ValueError, match="`n` to be an int"):
            templates.spell_number(not_an_int)
    assert templates.spell_number(np.int64(42)) == "FORTY TWO"
    vocab = templates.vocabulary()
    assert 2000 <= len(vocab) <= 4000  # 883 words before the library-drawn lists
    rng = np.random.default_rng(0)
    for update in (None, *UPDATES):
        for _ in range(200):
            req = templates.sample_request(rng, update)
            assert templates.is_valid_transcript(req.text)
            assert set(req.text.split()) <= vocab
            assert all(value in req.text for value in req.slots.values())
            assert req.entities_new == (update is not None)
    with pytest.raises(ValueError, match="`update`"):
        templates.sample_request(rng, 6)
    with pytest.raises(ValueError, match="held_out"):
        templates.sample_request(rng, 1, held_out=True)


def _template_regex(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"\{[a-z_]+\}", pattern)
    return re.compile("^" + "(.+)".join(re.escape(p) for p in parts) + "$")


def test_held_out_texts_use_templates_training_never_uses() -> None:
    base = [_template_regex(t.pattern) for t in templates.TEMPLATES]
    base += [_template_regex(p) for p in templates._SENTENCE_PATTERNS]
    other = [_template_regex(t.pattern) for t in templates.OTHER_TEMPLATES]
    other += [_template_regex(p) for p in templates._OTHER_SENTENCE_PATTERNS]
    assert {t.intent for t in templates.OTHER_TEMPLATES} <= {t.intent for t in templates.TEMPLATES}
    for i in range(400):
        req = templates.sample_request(np.random.default_rng([1, i]), held_out=True)
        assert any(r.match(req.text) for r in other), req.text
        assert req.text not in templates.GENERAL_SENTENCES
        train = templates.sample_request(np.random.default_rng([2, i]))
        assert not any(r.match(train.text) for r in other), train.text
        if train.text not in templates.GENERAL_SENTENCES:
            assert any(r.match(train.text) for r in base), train.text


def test_dates_years_and_duplicate_articles() -> None:
    from lightning_amortized.data.numbers import _GENERATED

    rng = np.random.default_rng(0)
    dates = [_GENERATED["date"](rng) for _ in range(50)]
    years = [_GENERATED["year"](rng) for _ in range(50)]
    assert all(templates.is_valid_transcript(t) for t in dates + years)
    assert any(re.fullmatch(r"THE [A-Z ]+ OF [A-Z]+", d) for d in dates)
    assert all(re.fullmatch(r"(NINETEEN|TWENTY|TWO THOUSAND)( [A-Z]+)*", y) for y in years), years
    team = templates.Template("sports", "WHAT WAS THE SCORE OF THE {team} GAME")
    assert team.fill({"team": "THE DATA DRAGONS"}) == "WHAT WAS THE SCORE OF THE DATA DRAGONS GAME"


def test_lexicon_file_matches_the_libraries() -> None:
    shipped, drawn = lexicon.lexicon(), lexicon_draw.draw_lexicon()
    assert shipped == drawn
    assert len(shipped.first_names) == len(set(shipped.first_names)) == 220
    update_words = {w for u in templates.UPDATE_ENTITIES for vs in u.values() for v in vs for w in v.split()}
    for field in ("first_names", "last_names", "nouns", "verbs", "adjectives"):
        assert not update_words & set(getattr(shipped, field)), field
    assert lexicon_draw.clean_phrase("Søren Kierkegaard") == "SOREN KIERKEGAARD"
    assert lexicon_draw.clean_phrase("a b") is None and lexicon_draw.clean_phrase("one two three four") is None


# --------------------------------------------------------------------------- manifests
def test_corpus_json_and_slu_jsonl_match_files(corpus: tuple[Path, dict]) -> None:
    root, info = corpus
    assert json.loads((root / "corpus.json").read_text()) == info
    assert info["format_version"] == 1 and info["seed"] == 0 and info["utterances"] == N
    assert info["generator_version"] == "2.2.0" and info["vocabulary_size"] == len(templates.vocabulary())
    assert set(info["splits"]) == set(SPLITS)
    assert set(info["entities"]) == {"base", *(f"update-{k}" for k in UPDATES)}
    for split in SPLITS:
        transcripts = _transcripts(root, split)
        rows = [json.loads(line) for line in (root / split / "slu.jsonl").read_text().splitlines()]
        assert [r["id"] for r in rows] == sorted(transcripts)
        assert len(rows) == info["splits"][split]["utterances"]
        flacs = {p.stem for p in (root / split).glob("*/*/*.flac")}
        assert flacs == set(transcripts)
        for row in rows:
            assert set(row) == {"id", "intent", "slots", "text", "entities_new"}
            assert row["text"] == transcripts[row["id"]]
            assert all(_has_phrase(row["text"], v) for v in row["slots"].values())
            if row["intent"] == "general":
                assert row["slots"] == {}


# --------------------------------------------------------------------------- idempotence
def test_second_call_is_fast_and_writes_nothing(corpus: tuple[Path, dict]) -> None:
    root, info = corpus
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    start = time.perf_counter()
    again = make_corpus(root, N, seed=0, show_progress=False)
    assert time.perf_counter() - start < 1.0
    assert again == info
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before
    assert main(["make-corpus", str(root), "--utterances", str(N), "--seed", "0", "--quiet"]) == 0
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before


def test_other_corpus_in_root_is_refused(corpus: tuple[Path, dict]) -> None:
    root, _ = corpus
    with pytest.raises(ValueError, match="different corpus"):
        make_corpus(root, N, seed=5, show_progress=False)


def test_corpus_of_an_older_generator_is_replaced_with_a_warning(tmp_path: Path) -> None:
    old = tmp_path / "dev" / "1" / "2" / "1-2-0000.flac"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"generator 1.0.0")
    (tmp_path / "corpus.json").write_text(json.dumps(
        {"format_version": 1, "generator": "lightning_amortized.data.synthetic",
         "generator_version": "1.0.0", "seed": 0, "utterances": 50, "noise_snr_db": [20.0, 40.0]}))
    with pytest.warns(UserWarning, match="generator version 1.0.0"):
        info = make_corpus(tmp_path, 50, seed=0, num_workers=1, show_progress=False)
    assert info["generator_version"] == "2.2.0" and not old.exists()


def test_frequency_warp_scales_duration(tmp_path: Path) -> None:
    from lightning_amortized.data.render import _render

    seconds = {}
    for warp in (19000, 22050, 25000):
        job = plan._Job(id=f"w{warp}", split="test", index=0, path=str(tmp_path / f"{warp}.flac"),
                        text="SET A TIMER FOR TEN MINUTES", voice="en-us+m3", rate=170, pitch=50,
                        pitch_range=50, seed=1, snr_db=None, warp_rate=warp)
        seconds[warp] = _render(job)[2]
    # same silence margins (same seed); the speech part scales by 22,050 / warp
    assert seconds[19000] > seconds[22050] > seconds[25000]
    assert (seconds[19000] - seconds[25000]) / seconds[22050] == pytest.approx(22050 / 19000 - 22050 / 25000, abs=0.08)


def test_missing_file_is_regenerated(tmp_path: Path) -> None:
    info = make_corpus(tmp_path, 50, seed=3, num_workers=1, show_progress=False)
    victim = sorted(tmp_path.glob("dev/*/*/*.flac"))[0]
    data = victim.read_bytes()
    victim.unlink()
    assert make_corpus(tmp_path, 50, seed=3, num_workers=1, show_progress=False) == info
    assert victim.read_bytes() == data


def test_foreign_split_folders_are_kept_unless_overwrite(tmp_path: Path) -> None:
    precious = tmp_path / "train" / "19" / "198" / "19-198-0000.flac"
    precious.parent.mkdir(parents=True)
    precious.write_bytes(b"not ours")
    with pytest.raises(ValueError, match="did not write"):
        make_corpus(tmp_path, 50, seed=0, num_workers=1, show_progress=False)
    assert precious.read_bytes() == b"not ours"
    make_corpus(tmp_path, 50, seed=0, num_workers=1, show_progress=False, overwrite=True)
    assert not precious.exists() and (tmp_path / "corpus.json").is_file()
    assert not (tmp_path / ".make-corpus-in-progress").exists()


def test_interrupted_run_is_cleaned_up(tmp_path: Path) -> None:
    stale = tmp_path / "dev" / "1" / "2" / "1-2-0000.flac"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half written")
    (tmp_path / ".make-corpus-in-progress").touch()  # what an interrupted run leaves
    from lightning_amortized.data.prepare import CorpusError, prepare_librispeech

    with pytest.raises(CorpusError, match="unfinished synthetic corpus .*make-corpus .* again"):
        prepare_librispeech(tmp_path, ["dev"], tmp_path / "manifests")
    info = make_corpus(tmp_path, 50, seed=0, num_workers=1, show_progress=False)
    assert not stale.exists()
    assert len(list(tmp_path.rglob("*.flac"))) == info["utterances"] == 50


# --------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"utterances": 10}, "`utterances` to be at least"),
        ({"utterances": "many"}, "`utterances` to be an int"),
        ({"seed": -1}, "`seed`"),
        ({"num_workers": 0}, "`num_workers`"),
        ({"noise_snr_db": (40.0, 20.0)}, "low <= high"),
        ({"noise_snr_db": (10.0,)}, "`noise_snr_db`"),
    ],
)
def test_bad_arguments_raise(tmp_path: Path, kwargs: dict, match: str) -> None:
    args = {"utterances": N, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        make_corpus(tmp_path, args.pop("utterances"), args.pop("seed"), show_progress=False, **args)
    assert not any(tmp_path.iterdir())


def test_cli_reports_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path), "--utterances", "5", "--quiet"]) == 2
    assert "`utterances` to be at least" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    for root, match in ((tmp_path / "afile", "is a file, not a folder"), (tmp_path / "afile" / "sub", "Not a directory")):
        assert main([str(root), "--utterances", "60", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("lightning-amortized make-corpus: error: ") and match in err and err.count("\n") == 1


def test_unknown_voice_raises() -> None:
    tts = EspeakSynthesizer()
    with pytest.raises(EspeakError, match="Unknown eSpeak NG voice"):
        tts.synthesize("hello", "xx-klingon")
    with pytest.raises(EspeakError, match="Unknown eSpeak NG variant"):
        tts.synthesize("hello", "en-us+nosuchvariant")
    with pytest.raises(ValueError, match="`text`"):
        tts.synthesize("   ", "en-us")
    with pytest.raises(ValueError, match="`rate`"):
        tts.synthesize("hello", "en-us", rate=10)


# --------------------------------------------------------------------------- free text
def test_free_text_replaces_a_share_of_train_texts_only(tmp_path: Path) -> None:
    _, jobs, labels = plan._plan(tmp_path, 2000, 0, None)
    _, free_jobs, free_labels = plan._plan(tmp_path, 2000, 0, None, free_text=0.3)
    changed = [(a, b) for a, b in zip(jobs, free_jobs) if a != b]
    assert {b.split for _, b in changed} == {"train"}
    assert all(a.voice == b.voice and a.path == b.path and a.seed == b.seed for a, b in changed)  # only the words
    share = len(changed) / sum(j.split == "train" for j in jobs)
    assert 0.25 < share < 0.35
    words = set(templates.free_text_words())
    for _, job in changed:
        label = free_labels[job.id]
        assert label["intent"] == "general" and label["slots"] == {} and not label["entities_new"]
        assert templates.is_valid_transcript(job.text) and set(job.text.split()) <= words
    assert len(words) > 2000 and words <= templates.vocabulary()


def test_free_sentences_never_hold_an_update_entity() -> None:
    new_words = {w for k in UPDATES for vs in templates.update_entities(k).values() for v in vs for w in v.split()}
    assert new_words - templates.vocabulary(updates=False)  # some new names are made of new words only...
    assert not (new_words - templates.vocabulary(updates=False)) & set(templates.free_text_words())  # ...never drawn
    rng = np.random.default_rng(0)
    phrases = [v for k in UPDATES for vs in templates.update_entities(k).values() for v in vs]
    for _ in range(2000):
        text = templates.free_sentence(rng)
        assert 3 <= len(text.split()) <= 10
        assert not any(_has_phrase(text, p) for p in phrases)


def test_free_text_is_part_of_the_corpus(tmp_path: Path) -> None:
    info = make_corpus(tmp_path, 50, seed=0, num_workers=1, show_progress=False, free_text=0.5)
    assert info["free_text"] == 0.5
    trans = _transcripts(tmp_path, "train")
    slu = {json.loads(line)["id"]: json.loads(line) for line in (tmp_path / "train" / "slu.jsonl").read_text().splitlines()}
    assert trans.keys() == slu.keys() and all(slu[u]["text"] == t for u, t in trans.items())
    with pytest.raises(ValueError, match="free_text=0.5.*free_text=0.0"):
        make_corpus(tmp_path, 50, seed=0, num_workers=1, show_progress=False)
    for bad in (1.5, -0.1, True, "half"):
        with pytest.raises(ValueError, match="`free_text`"):
            make_corpus(tmp_path / "bad", 50, seed=0, show_progress=False, free_text=bad)  # type: ignore[arg-type]
    assert not (tmp_path / "bad").exists()
