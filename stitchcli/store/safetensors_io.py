"""Safetensors files with checksums, read and written directly.

Every file stitchcli writes (cache entries and their shards, the heads of :mod:`stitchcli.heads`) carries
SHA-256 digests of its header and of its tensor data in its metadata (see :data:`CHECKSUM_FIELD`).
:func:`read_header` reads the header alone and checks the file's size against it;
:meth:`SafetensorsHeader.verify` checks the header's digest and :meth:`SafetensorsHeader.read_tensors` the
data's. :func:`write_safetensors_streamed` is the one writer: tensors arrive in row chunks, the digests are
computed as the bytes go by, and the file is renamed into place only when complete.

Only numpy is imported here (the format is read and written directly, so that the digests are computed as the
bytes go by): a cache hit never pays for importing torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from stitchcli.store.atomic import atomic_file
from stitchcli.store.keys import canonical_json

METADATA_KEY = "stitchcli"


class CorruptEntry(Exception):
    """A cache file that cannot be trusted (unreadable, truncated, failing its checksum, or made for another key)."""


# Every file stitchcli writes (entries, shards, heads) carries a checksum in its metadata document:
#   "checksum": {"algorithm": "sha256", "data": <hex>, "header": <hex>}
# ``data`` is the SHA-256 of the tensor bytes (everything after the header, in file order); ``header`` that
# of the header without itself: the metadata document, the tensors' dtypes, shapes and offsets. The header
# digest is checked whenever the header is read (cheap: a cache hit reads nothing else), the data digest
# whenever the tensors are. SHA-256 because hashlib has it everywhere, hardware-accelerated on current x86
# and ARM CPUs (what it costs on a cache entry: see docs/RELIABILITY.md).
CHECKSUM_FIELD = "checksum"
CHECKSUM_ALGORITHM = "sha256"
_READ_CHUNK = 1 << 24
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
_ITEMSIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
              "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_NUMPY_DTYPES = {"BOOL": "?", "U8": "u1", "I8": "i1", "I16": "<i2", "U16": "<u2", "F16": "<f2", "I32": "<i4",
                 "U32": "<u4", "F32": "<f4", "I64": "<i8", "U64": "<u8", "F64": "<f8"}


@dataclass(frozen=True)
class TensorSlot:
    """Where one tensor lies in a safetensors file: dtype (safetensors' name), shape, [start, stop) in the data."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    stop: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """The parsed header of a safetensors file written by stitchcli (see :func:`read_header`).

    Attributes:
        path: the file.
        metadata: the stitchcli JSON document of the metadata.
        tensors: name -> slot, for every tensor.
        extra_metadata: other entries of the safetensors metadata (stitchcli writes none).
        data_start: byte offset of the tensor data.
    """

    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, TensorSlot]
    extra_metadata: dict[str, str]
    data_start: int

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Tensor name -> shape."""
        return {name: slot.shape for name, slot in self.tensors.items()}

    @property
    def dtypes(self) -> dict[str, str]:
        """Tensor name -> dtype, as safetensors names it (F32, I64...)."""
        return {name: slot.dtype for name, slot in self.tensors.items()}

    @property
    def has_checksum(self) -> bool:
        """Whether the metadata carries a checksum record at all (files written before stitchcli wrote checksums do not)."""
        return CHECKSUM_FIELD in self.metadata

    def verify(self) -> None:
        """Check the header against its own checksum; raise CorruptEntry if it has none or it does not match."""
        record = self.metadata.get(CHECKSUM_FIELD)
        if record is None:
            raise CorruptEntry("it has no checksum (written by an older stitchcli, or edited by hand)")
        if not isinstance(record, dict) or record.get("algorithm") != CHECKSUM_ALGORITHM or not isinstance(record.get("data"), str):
            raise CorruptEntry(f"its checksum record is damaged ({_short(record)})")
        if _header_digest(self.metadata, self.tensors, self.extra_metadata) != record.get("header"):
            raise CorruptEntry("its header does not match its checksum (bit rot, or edited by hand)")

    def read_tensors(self) -> dict[str, np.ndarray]:
        """Give every tensor, read in one pass; CorruptEntry if the header or the data fails its checksum."""
        self.verify()
        digest = hashlib.new(CHECKSUM_ALGORITHM)
        tensors: dict[str, np.ndarray] = {}
        try:
            with open(self.path, "rb") as f:
                f.seek(self.data_start)
                for name, slot in sorted(self.tensors.items(), key=lambda item: item[1].start):
                    if slot.dtype not in _NUMPY_DTYPES:
                        raise CorruptEntry(f"tensor {name} has dtype {slot.dtype}, which numpy cannot hold")
                    array = np.empty(slot.shape, dtype=_NUMPY_DTYPES[slot.dtype])
                    view = memoryview(array.reshape(-1).view(np.uint8))
                    done = 0
                    while done < len(view):
                        got = f.readinto(view[done : done + _READ_CHUNK])
                        if not got:
                            raise CorruptEntry(f"it ends inside tensor {name} (truncated)")
                        digest.update(view[done : done + got])
                        done += got
                    tensors[name] = array
        except OSError as exc:
            raise CorruptEntry(f"cannot read it ({exc.strerror or exc})") from exc
        if digest.hexdigest() != self.metadata[CHECKSUM_FIELD]["data"]:
            raise CorruptEntry("its data does not match its checksum (bit rot, or edited by hand)")
        return tensors


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _header_digest(document: dict[str, Any], tensors: dict[str, TensorSlot], extra: dict[str, str]) -> str:
    """Give the checksum of a header: the document (without the header digest itself), the tensors' slots and any
    other metadata entries."""
    record = {k: v for k, v in dict(document.get(CHECKSUM_FIELD) or {}).items() if k != "header"}
    body = {
        "metadata": {**document, CHECKSUM_FIELD: record},
        "tensors": {name: [s.dtype, list(s.shape), [s.start, s.stop]] for name, s in tensors.items()},
        "extra": extra,
    }
    return hashlib.new(CHECKSUM_ALGORITHM, canonical_json(body).encode()).hexdigest()


def read_header(path: Path) -> SafetensorsHeader:
    """Give the parsed header of a safetensors file; CorruptEntry if it is unreadable, truncated, extended or not
    a stitchcli file. Reads the header alone (no tensor data) and checks the file's size against it; the checksums
    are checked by :meth:`SafetensorsHeader.verify` and :meth:`SafetensorsHeader.read_tensors`."""
    try:
        with open(path, "rb") as f:
            stat = os.fstat(f.fileno())
            prefix = f.read(8)
            size = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
            if size < 2 or size > min(_MAX_HEADER_BYTES, stat.st_size - 8):
                raise CorruptEntry(
                    f"unreadable safetensors file ({stat.st_size} bytes, header size {size}): truncated, or not a safetensors file"
                )
            raw = f.read(size)
    except OSError as exc:
        raise CorruptEntry(f"cannot read it ({exc.strerror or exc})") from exc
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptEntry(f"unreadable safetensors file (its header is not JSON: {exc})") from exc
    if not isinstance(header, dict):
        raise CorruptEntry("unreadable safetensors file (its header is not a JSON object)")
    extra = header.pop("__metadata__", None) or {}
    if not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values()):
        raise CorruptEntry("unreadable safetensors file (its metadata is not a map of strings)")
    tensors = {name: _tensor_slot(name, entry) for name, entry in header.items()}
    end = 0
    for name, slot in sorted(tensors.items(), key=lambda item: item[1].start):
        if slot.start != end:
            raise CorruptEntry(f"unreadable safetensors file (tensor {name} starts at {slot.start}, not {end})")
        end = slot.stop
    data_start = 8 + size
    if stat.st_size != data_start + end:
        raise CorruptEntry(
            f"the file is {stat.st_size} bytes but its header describes {data_start + end}: truncated, or bytes were added"
        )
    if METADATA_KEY not in extra:
        raise CorruptEntry("no stitchcli metadata in the file")
    try:
        meta = json.loads(extra.pop(METADATA_KEY))
    except json.JSONDecodeError as exc:
        raise CorruptEntry(f"metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise CorruptEntry("its metadata is not a JSON object")
    return SafetensorsHeader(path, meta, tensors, extra, data_start)


def _tensor_slot(name: str, entry: Any) -> TensorSlot:
    """Give the slot a header entry describes; CorruptEntry when it is malformed or its size disagrees with its shape."""
    try:
        dtype, shape, (start, stop) = entry["dtype"], entry["shape"], entry["data_offsets"]
        valid = (
            dtype in _ITEMSIZES
            and isinstance(shape, list)
            and all(type(d) is int and d >= 0 for d in [*shape, start, stop])
            and start <= stop
            and stop - start == int(np.prod(shape, dtype=np.int64)) * _ITEMSIZES[dtype]
        )
    except (KeyError, TypeError, ValueError):
        valid = False
    if not valid:
        raise CorruptEntry(f"unreadable safetensors file (tensor {name}: {_short(entry)})")
    return TensorSlot(dtype, tuple(shape), start, stop)


def read_safetensors_header(path: Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]], dict[str, str]]:
    """Give (metadata document, tensor shapes, tensor dtypes) of a safetensors file, or raise CorruptEntry.

    The file's size is checked against the header; its checksums are not (see :func:`read_header`).
    """
    header = read_header(path)
    return header.metadata, header.shapes, header.dtypes



def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, Any]) -> None:
    """Write tensors atomically (a temporary file in the same folder, fsync, then rename), with their checksum.

    The tensors are laid out in the given order: the same tensors and metadata give the same file as
    :func:`write_safetensors_streamed`.
    """
    arrays = [(name, np.ascontiguousarray(value)) for name, value in tensors.items()]
    write_safetensors_streamed(path, [(name, a.dtype, a.shape, iter([a])) for name, a in arrays], metadata)


_SAFETENSORS_DTYPES = {
    np.dtype(t): name
    for t, name in ((np.float64, "F64"), (np.float32, "F32"), (np.float16, "F16"), (np.int64, "I64"), (np.int32, "I32"),
                    (np.int16, "I16"), (np.int8, "I8"), (np.uint8, "U8"), (np.bool_, "BOOL"))
}


def write_safetensors_streamed(
    path: Path,
    tensors: list[tuple[str, np.dtype, tuple[int, ...], Iterator[np.ndarray]]],
    metadata: dict[str, Any],
    *,
    extra_metadata: Mapping[str, str] | None = None,
) -> None:
    """Write a safetensors file whose tensors arrive in row chunks, atomically, never holding a tensor whole.

    ``tensors``: (name, dtype, shape, chunks) with the chunks in row order; the header is written first
    (the format is an 8-byte little-endian header size, the JSON header padded with spaces to 8 bytes,
    then the tensors' bytes back to back), so memory stays at one chunk whatever the number of rows.

    The metadata document gets the file's checksum record (see :data:`CHECKSUM_FIELD`): the header is
    written with two random 64-hex-digit placeholders in it, the data digest is computed as the chunks go
    by, and the placeholders are then overwritten in place by the two digests, which have the same length,
    so no offset moves.

    ``extra_metadata``: string entries written beside stitchcli's document in the safetensors metadata, for
    readers that know nothing of it (``safetensors.safe_open(...).metadata()``); covered by the header digest.
    """
    extra = dict(extra_metadata or {})
    if METADATA_KEY in extra or not all(isinstance(value, str) for value in extra.values()):
        raise ValueError(f"extra_metadata must map names other than {METADATA_KEY!r} to strings")
    data_token, header_token = secrets.token_hex(32), secrets.token_hex(32)
    document = json.loads(json.dumps(metadata, sort_keys=True, default=str))  # as a reader will parse it
    document[CHECKSUM_FIELD] = {"algorithm": CHECKSUM_ALGORITHM, "data": data_token, "header": header_token}
    header: dict[str, Any] = {"__metadata__": {**extra, METADATA_KEY: json.dumps(document, sort_keys=True)}}
    slots: dict[str, TensorSlot] = {}
    offset = 0
    for name, dtype, shape, _ in tensors:
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        slots[name] = TensorSlot(_SAFETENSORS_DTYPES[np.dtype(dtype)], tuple(int(d) for d in shape), offset, offset + size)
        header[name] = {"dtype": slots[name].dtype, "shape": list(slots[name].shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    where = {token: 8 + encoded.index(token.encode()) for token in (data_token, header_token)}
    digest = hashlib.new(CHECKSUM_ALGORITHM)
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for name, dtype, shape, chunks in tensors:
            written = 0
            for chunk in chunks:
                data = memoryview(np.ascontiguousarray(chunk, dtype=dtype).reshape(-1).view(np.uint8))
                f.write(data)
                digest.update(data)
                written += len(data)
            if written != slots[name].stop - slots[name].start:
                raise ValueError(f"tensor {name}: {written} bytes written for shape {shape}")
        document[CHECKSUM_FIELD]["data"] = digest.hexdigest()
        for token, value in ((data_token, digest.hexdigest()), (header_token, _header_digest(document, slots, extra))):
            f.seek(where[token])
            f.write(value.encode())
