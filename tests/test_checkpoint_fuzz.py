"""Random bytes and random headers into the checkpoint loader: SlimkitError is the only way out.

A seeded generator builds a few hundred files: raw noise, truncated checkpoints, valid safetensors
framing around random metadata, random tensor tables (dtypes, shapes, offsets), and real
checkpoints whose class, builder, kwargs, format or layout (shapes, removed blocks, module
attributes) were replaced by random JSON.
"""

import json
import math
import random
import struct

import pytest
from safetensors.torch import save_file

from slimkit.errors import SlimkitError
from slimkit.io import load_model, read_architecture, save_model
from slimkit.models import MobileNetV2Small, SmallViT, TargetModel

CASES = 400
DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "I8", "U8", "BOOL", "C64", "F8_E4M3", "X9", ""]
NAMES = ["TargetModel", "SourceModel", "SeedCNN", "ResNetCifar", "MobileNetV2Small", "SmallViT", "Nope", ""]
KEYS = ["in_channels", "input_size", "num_classes", "widths", "depth", "dim", "num_heads", "patch", "mlp_ratio",
        "width", "width_mult", "setting", "last_channel", "bogus"]
MODULES = ["", "conv1", "fc2", "blocks.0", "blocks.0.attn", "features.0", "head", "nope"]
ATTRIBUTES = ["in_channels", "out_channels", "groups", "num_heads", "head_dim", "num_features", "eps", "training",
              "weight", "padding", "kernel_size", "normalized_shape", "removable", "bogus"]


def _json_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, 1, -1, 3, 4, 8, 28, 2**31, 2**62, 10**30, -(10**9)])
    if kind == 3:
        return rng.choice([0.5, -2.0, 1e308, math.inf, math.nan, 1e-300])
    if kind == 4:
        return rng.choice(["", "x", "TargetModel", "é", "0" * 50])
    if kind == 5:
        return [rng.randrange(-2, 40) for _ in range(rng.randrange(5))]
    if kind in (6, 7):
        return [_json_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(KEYS): _json_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _frame(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header, allow_nan=True).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _tiny_checkpoint(tmp_path, rng: random.Random) -> bytes:
    model = rng.choice([TargetModel(in_channels=1, input_size=4, num_classes=3, widths=(2, 2, 4)),
                        SmallViT(num_classes=3, input_size=4, patch=2, dim=4, depth=2, num_heads=2),
                        MobileNetV2Small(num_classes=3, input_size=4, setting=[[1, 8, 2, 1]], last_channel=8)])
    return save_model(model, tmp_path / "seed.safetensors").read_bytes()


def _split(blob: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def _case(rng: random.Random, tmp_path) -> bytes:
    kind = rng.randrange(7)
    if kind == 0:  # noise
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))
    blob = _tiny_checkpoint(tmp_path, rng)
    if kind == 1:  # truncated
        return blob[:rng.randrange(len(blob))]
    if kind == 2:  # bytes flipped inside the header
        raw = bytearray(blob)
        n = struct.unpack("<Q", blob[:8])[0]
        for _ in range(rng.randrange(1, 6)):
            raw[rng.randrange(8, 8 + n)] = rng.randrange(32, 127)
        return bytes(raw)
    header, data = _split(blob)
    arch = json.loads(header["__metadata__"]["slimkit"])
    if kind == 3:  # random JSON in place of the whole description
        header["__metadata__"]["slimkit"] = json.dumps(_json_value(rng), allow_nan=True)
    elif kind == 4 and rng.random() < 0.3:  # a description with random fields
        for field in rng.sample(["format", "class", "builder", "kwargs", "layout", "extra"], rng.randrange(1, 5)):
            arch[field] = rng.choice([_json_value(rng), rng.choice(NAMES), rng.randrange(-1, 4)]) \
                if field in ("format", "class") else _json_value(rng)
        header["__metadata__"]["slimkit"] = json.dumps(arch, allow_nan=True)
    elif kind == 4:  # the right class with some kwargs changed: unknown, mistyped, huge or merely different
        for _ in range(rng.randrange(1, 3)):
            key = rng.choice(list(arch["kwargs"])) if rng.random() < 0.75 else rng.choice(KEYS)
            arch["kwargs"][key] = rng.choice([_json_value(rng), rng.randrange(1, 9), 10**9, 2**40,
                                              [2**20, 2**20, 2**20], [[6, 2**30, 2**30, 1]]])
        header["__metadata__"]["slimkit"] = json.dumps(arch, allow_nan=True)
    elif kind == 5:  # a layout that lies about shapes, blocks or module attributes
        names = [k for k in header if k != "__metadata__"]
        shapes = {k: list(header[k]["shape"]) for k in names}
        for k in rng.sample(names, rng.randrange(0, 3)):
            shapes[k] = rng.choice([[rng.randrange(0, 10**6) for _ in range(rng.randrange(4))], [2**40], "x"])
        attributes = {rng.choice(MODULES): {rng.choice(ATTRIBUTES): rng.choice([_json_value(rng), rng.randrange(0, 9),
                                                                                10**9, -1, [3, 3]])}
                      for _ in range(rng.randrange(4))}
        arch["layout"] = {"shapes": shapes, "removed_blocks": rng.choice([[], ["blocks.0"], ["conv1"], [""], 3]),
                          "attributes": rng.choice([attributes, attributes, [], 7])}
        header["__metadata__"]["slimkit"] = json.dumps(arch, allow_nan=True)
    else:  # a random tensor table, consistent offsets or not
        header = {"__metadata__": rng.choice([header["__metadata__"], {"slimkit": 5}, {"a": "b"}, []])}
        offset = 0
        for i in range(rng.randrange(4)):
            shape = [rng.randrange(0, 5) for _ in range(rng.randrange(3))] if rng.random() < 0.8 else [2**40, 2**40]
            size = 4 * math.prod(shape)
            end = offset + size if rng.random() < 0.8 else offset + rng.randrange(0, 64)
            header[f"t{i}"] = {"dtype": rng.choice(DTYPES), "shape": shape, "data_offsets": [offset, end]}
            offset = end
        data = bytes(min(offset, 4096))
    return _frame(header, data)


def test_random_files_only_ever_raise_slimkit_error(tmp_path):
    rng = random.Random(12)
    outcomes = {"loaded": 0, "refused": 0}
    for i in range(CASES):
        path = tmp_path / f"case{i}.safetensors"
        path.write_bytes(_case(rng, tmp_path))
        for fn in (read_architecture, load_model):
            try:
                fn(path)
                outcomes["loaded"] += 1
            except SlimkitError as exc:
                assert "\n" not in str(exc), f"case {i}: multi-line message {exc!s}"
                outcomes["refused"] += 1
            except Exception as exc:  # noqa: BLE001 - the point of the test
                pytest.fail(f"case {i}: {fn.__name__} raised {type(exc).__name__}: {exc}")
    assert outcomes["refused"] > CASES  # most cases are broken; every one of them was refused cleanly


def test_plain_safetensors_with_random_tensors_need_a_header(tmp_path):
    import torch

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(path), metadata={"slimkit": json.dumps({"format": 1, "class": "TargetModel"})})
    with pytest.raises(SlimkitError, match="does not match TargetModel"):
        load_model(path)
