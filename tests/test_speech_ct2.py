"""The CTranslate2 reader on files built here, and the Whisper converter on a tiny random Whisper.

The tiny model is turned into a CTranslate2 spec by the layout the format defines (fused [q; k; v]
self-attention rows, fused [k; v] cross-attention rows with a zero key bias, head counts as
scalars, the output projection an alias of the embedding); converting it back must give the same
weights and the same outputs.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from slimkit.errors import SlimkitError
from slimkit.speech.ct2 import parse_ct2, read_ct2

_IDS = {np.dtype("float32"): 0, np.dtype("int8"): 1, np.dtype("int16"): 2, np.dtype("int32"): 3,
        np.dtype("float16"): 4}


def _string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def ct2_bytes(variables: dict, aliases: dict | None = None, version: int = 6, spec: str = "TestSpec",
              dtype_ids: dict | None = None) -> bytes:
    """A CTranslate2 model file, written field by field as the format defines it."""
    out = struct.pack("<I", version) + _string(spec) + struct.pack("<II", 1, len(variables))
    for name, array in variables.items():
        array = np.asarray(array)
        dtype_id = (dtype_ids or {}).get(name, _IDS.get(array.dtype, 5))
        data = array.astype(array.dtype.newbyteorder("<")).tobytes()
        out += _string(name) + struct.pack("<B", array.ndim) + struct.pack(f"<{array.ndim}I", *array.shape)
        out += struct.pack("<BI", dtype_id, len(data)) + data
    out += struct.pack("<I", len(aliases or {}))
    for alias, target in (aliases or {}).items():
        out += _string(alias) + _string(target)
    return out


def _small() -> dict:
    rng = np.random.default_rng(0)
    return {"a/weight": rng.standard_normal((3, 4)).astype(np.float16),
            "a/bias": rng.standard_normal(3).astype(np.float32),
            "num_heads": np.array(6, np.int16), "flag": np.array(1, np.int8), "count": np.array(-1, np.int32)}


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_valid_file_round_trips_every_dtype_and_alias() -> None:
    variables = _small()
    bf16_source = np.array([1.5, -2.25, 3.0e-3], np.float32)
    variables["b/bf16"] = (bf16_source.view(np.uint32) >> 16).astype(np.uint16)  # bf16 = top half of f32
    model = parse_ct2(ct2_bytes(variables, {"b/alias": "a/weight"}, dtype_ids={"b/bf16": 5}))
    assert model.spec == "TestSpec" and model.revision == 1
    for name, array in _small().items():
        np.testing.assert_array_equal(model.get(name), array)
    np.testing.assert_array_equal(model.as_float32("a/weight"), _small()["a/weight"].astype(np.float32))
    np.testing.assert_array_equal(model.as_float32("b/alias"), model.as_float32("a/weight"))
    np.testing.assert_allclose(model.as_float32("b/bf16"), bf16_source, rtol=1e-2)
    assert model.dtypes["b/bf16"] == "bfloat16"
    assert model.scalar("num_heads") == 6 and model.scalar("count") == -1


@pytest.mark.parametrize("keep", [0, 3, 9, 20, 40, 60, -20, -1])
def test_truncated_file_is_one_line(tmp_path, keep: int) -> None:
    data = ct2_bytes(_small(), {"x": "a/bias"})
    path = tmp_path / "model.bin"
    path.write_bytes(data[:keep] if keep >= 0 else data[:len(data) + keep])
    with pytest.raises(SlimkitError, match="truncated") as exc:
        read_ct2(path)
    assert str(path) in _one_line(exc)


def test_wrong_binary_version_is_one_line() -> None:
    with pytest.raises(SlimkitError, match="binary version 5; slimkit reads version 6") as exc:
        parse_ct2(ct2_bytes(_small(), version=5))
    _one_line(exc)


def test_unknown_dtype_is_one_line() -> None:
    with pytest.raises(SlimkitError, match="unknown dtype id 9") as exc:
        parse_ct2(ct2_bytes(_small(), dtype_ids={"a/bias": 9}))
    _one_line(exc)


def test_byte_count_inconsistent_with_shape_is_one_line() -> None:
    data = bytearray(ct2_bytes({"w": np.zeros((2, 2), np.float32)}))
    head = 4 + len(_string("TestSpec")) + 8 + len(_string("w")) + 1 + 8 + 1
    data[head:head + 4] = struct.pack("<I", 12)  # 2x2 float32 needs 16 bytes
    with pytest.raises(SlimkitError, match="declares 12 bytes, its shape needs 16") as exc:
        parse_ct2(bytes(data))
    _one_line(exc)


def test_trailing_bytes_and_dangling_alias_are_one_line() -> None:
    with pytest.raises(SlimkitError, match="2 unexpected bytes after the last alias") as exc:
        parse_ct2(ct2_bytes(_small()) + b"\0\0")
    _one_line(exc)
    with pytest.raises(SlimkitError, match="points to 'nowhere', which is not a stored variable") as exc:
        parse_ct2(ct2_bytes(_small(), {"x": "nowhere"}))
    _one_line(exc)


def test_missing_file_is_one_line(tmp_path) -> None:
    with pytest.raises(SlimkitError, match="does not exist"):
        read_ct2(tmp_path / "absent.bin")


def test_split_fused_follows_stacked_rows() -> None:
    from slimkit.speech.convert import split_fused

    w = np.arange(24, dtype=np.float32).reshape(6, 4)
    b = np.arange(6, dtype=np.float32)
    (wq, bq), (wk, bk), (wv, bv) = split_fused(w, b, 3)
    np.testing.assert_array_equal(wq, w[0:2]) and np.testing.assert_array_equal(wv, w[4:6])
    np.testing.assert_array_equal(bk, b[2:4])
    with pytest.raises(SlimkitError):
        split_fused(w[:5], b[:5], 3)


transformers = pytest.importorskip("transformers")


def _tiny_whisper():
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    config = WhisperConfig(vocab_size=51864, num_mel_bins=8, d_model=16, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=2, decoder_attention_heads=4, encoder_ffn_dim=24, decoder_ffn_dim=32,
                           max_source_positions=20, max_target_positions=12, pad_token_id=50256, bos_token_id=50256,
                           eos_token_id=50256, decoder_start_token_id=50257)
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "k_proj" not in name:
                p.add_(0.1 * torch.randn_like(p))  # non-trivial biases and norms everywhere
    return model


def ct2_from_hf(model) -> dict[str, np.ndarray]:
    """The CTranslate2 Whisper spec of a transformers Whisper, by the format's definition (fp16 weights)."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    h = lambda a: a.astype(np.float16)  # noqa: E731
    out = {"encoder/num_heads": np.array(model.config.encoder_attention_heads, np.int16),
           "decoder/num_heads": np.array(model.config.decoder_attention_heads, np.int16),
           "decoder/pre_norm": np.array(1, np.int8), "decoder/activation": np.array(3, np.int8),
           "decoder/embeddings/weight": h(sd["model.decoder.embed_tokens.weight"]),
           "encoder/position_encodings/encodings": h(sd["model.encoder.embed_positions.weight"]),
           "decoder/position_encodings/encodings": h(sd["model.decoder.embed_positions.weight"])}
    for conv in ("conv1", "conv2"):
        for p in ("weight", "bias"):
            out[f"encoder/{conv}/{p}"] = h(sd[f"model.encoder.{conv}.{p}"])

    def lin(dst, src):
        out[f"{dst}/weight"], out[f"{dst}/bias"] = h(sd[f"{src}.weight"]), h(sd[f"{src}.bias"])

    def norm(dst, src):
        out[f"{dst}/gamma"], out[f"{dst}/beta"] = h(sd[f"{src}.weight"]), h(sd[f"{src}.bias"])

    def fused(dst, src, roles):
        out[f"{dst}/weight"] = h(np.concatenate([sd[f"{src}.{r}_proj.weight"] for r in roles]))
        zeros = np.zeros(sd[f"{src}.k_proj.weight"].shape[0], np.float32)
        out[f"{dst}/bias"] = h(np.concatenate([zeros if r == "k" else sd[f"{src}.{r}_proj.bias"] for r in roles]))

    for stack in ("encoder", "decoder"):
        norm(f"{stack}/layer_norm", f"model.{stack}.layer_norm")
        for i in range(getattr(model.config, f"{stack}_layers")):
            dst, src = f"{stack}/layer_{i}", f"model.{stack}.layers.{i}"
            fused(f"{dst}/self_attention/linear_0", f"{src}.self_attn", "qkv")
            lin(f"{dst}/self_attention/linear_1", f"{src}.self_attn.out_proj")
            norm(f"{dst}/self_attention/layer_norm", f"{src}.self_attn_layer_norm")
            if stack == "decoder":
                fused(f"{dst}/attention/linear_0", f"{src}.encoder_attn", "q")
                fused(f"{dst}/attention/linear_1", f"{src}.encoder_attn", "kv")
                lin(f"{dst}/attention/linear_2", f"{src}.encoder_attn.out_proj")
                norm(f"{dst}/attention/layer_norm", f"{src}.encoder_attn_layer_norm")
            lin(f"{dst}/ffn/linear_0", f"{src}.fc1")
            lin(f"{dst}/ffn/linear_1", f"{src}.fc2")
            norm(f"{dst}/ffn/layer_norm", f"{src}.final_layer_norm")
    return out


def test_converter_inverts_the_fused_layout_of_a_tiny_whisper() -> None:
    from slimkit.speech.convert import build_model

    reference = _tiny_whisper()
    # The reference in fp16 precision: what the CTranslate2 file can hold.
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(p.half().float())
    ct2 = parse_ct2(ct2_bytes(ct2_from_hf(reference), {"decoder/projection/weight": "decoder/embeddings/weight"},
                              spec="WhisperSpec"))
    converted = build_model(ct2, {"suppress_ids_begin": [220, 50256]})
    assert converted.config.encoder_attention_heads == 2 and converted.config.decoder_attention_heads == 4
    assert converted.config.encoder_ffn_dim == 24 and converted.config.max_target_positions == 12
    ref_sd, new_sd = reference.state_dict(), converted.state_dict()
    assert set(ref_sd) == set(new_sd)
    for key in ref_sd:
        torch.testing.assert_close(new_sd[key], ref_sd[key], rtol=0, atol=0, msg=key)
    assert converted.proj_out.weight.data_ptr() == converted.model.decoder.embed_tokens.weight.data_ptr()
    features = torch.randn(1, 8, 40)
    tokens = torch.tensor([[50257, 50362, 5, 7]])
    with torch.no_grad():
        torch.testing.assert_close(converted(input_features=features, decoder_input_ids=tokens).logits,
                                   reference(input_features=features, decoder_input_ids=tokens).logits)


def test_converter_refuses_a_nonzero_key_bias_and_a_foreign_spec() -> None:
    from slimkit.speech.convert import build_model

    spec = ct2_from_hf(_tiny_whisper())
    bias = spec["encoder/layer_0/self_attention/linear_0/bias"].copy()
    bias[16] = 1.0  # first entry of the key's part
    spec["encoder/layer_0/self_attention/linear_0/bias"] = bias
    with pytest.raises(SlimkitError, match="key projection carries a non-zero bias"):
        build_model(parse_ct2(ct2_bytes(spec, spec="WhisperSpec")), {})
    with pytest.raises(SlimkitError, match="not a WhisperSpec"):
        build_model(parse_ct2(ct2_bytes(spec, spec="TransformerSpec")), {})


def test_trimmed_encoder_is_the_encoder_on_a_shorter_input() -> None:
    """encode() on fewer frames = the encoder's own computation with the first positions of its table."""
    from slimkit.speech.evaluate import encode

    model = _tiny_whisper()
    enc = model.get_encoder()
    full = torch.randn(1, 8, 40)
    with torch.no_grad():
        torch.testing.assert_close(encode(model, full).last_hidden_state, enc(full).last_hidden_state)
        short = full[..., :14]
        x = torch.nn.functional.gelu(enc.conv2(torch.nn.functional.gelu(enc.conv1(short)))).permute(0, 2, 1)
        x = x + enc.embed_positions.weight[:7]
        for layer in enc.layers:
            x = layer(x, None)
        torch.testing.assert_close(encode(model, short).last_hidden_state, enc.layer_norm(x))
    assert enc.embed_positions.num_embeddings == 20 and enc.config.max_source_positions == 20  # restored
    with pytest.raises(SlimkitError, match="even number"):
        encode(model, full[..., :13])
