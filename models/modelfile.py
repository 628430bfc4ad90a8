"""The model file: one safetensors file holding the Sequential's weights and what is needed to rebuild it."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import safetensors.torch
from torch import nn

from models.layers import LayerSpecError, build_sequential, resolve_layers

FORMAT = "scv-sequential/1"
_MAX_HEADER = 100 * 1024 * 1024
_JSON_FIELDS = ("layers", "input_shape", "classes", "normalization")
_TEXT_FIELDS = ("format", "dataset", "version")


class ModelFileError(ValueError):
    """Bytes that are not an SCV model file, or one whose weights do not match its layers."""


def save_model(
    model: nn.Module,
    *,
    layers: list[dict],
    input_shape: Sequence[int],
    classes: Sequence[str],
    normalization: Mapping[str, Sequence[float]],
    dataset: str,
    version: str,
) -> bytes:
    """Serialise the model's state dict and its rebuild recipe into safetensors bytes."""
    # safetensors refuses shared or strided storage; own contiguous CPU copies sidestep both
    tensors = {name: t.detach().cpu().contiguous().clone() for name, t in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "layers": json.dumps(layers),
        "input_shape": json.dumps([int(n) for n in input_shape]),
        "classes": json.dumps([str(c) for c in classes]),
        "normalization": json.dumps({key: [float(v) for v in normalization[key]] for key in ("mean", "std")}),
        "dataset": dataset,
        "version": version,
    }
    return _canonical(safetensors.torch.save(tensors, metadata=metadata))


def _canonical(data: bytes) -> bytes:
    """The same file with its header's keys sorted. safetensors writes `__metadata__` in the order of a hash map
    seeded afresh for every call, so the same weights and fields would give other bytes (and another sha256) each
    time; a resumed job's snapshots must equal an uninterrupted run's byte for byte. Padded to 8 bytes with spaces,
    as safetensors pads it; the tensors' bytes and offsets are untouched."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.dumps(json.loads(data[8 : 8 + length]), sort_keys=True, separators=(",", ":"),
                        ensure_ascii=False).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + data[8 + length :]


def _refuse(reason: str) -> ModelFileError:
    return ModelFileError(f"not an SCV model file: {reason}; only safetensors files of format {FORMAT} "
                          "are accepted")


def _raw_header(data: bytes) -> dict[str, Any]:
    """The safetensors JSON header, after checking it frames the file exactly."""
    if data[:4] == b"PK\x03\x04" or data[:1] == b"\x80":
        # torch.save writes a zip; plain pickle starts with the PROTO opcode. Checked first, but a real
        # safetensors file never starts so: its first bytes are a header length far below 2**56.
        kind = "zip" if data[:1] == b"P" else "pickle"
        if len(data) < 8 or struct.unpack("<Q", data[:8])[0] > _MAX_HEADER or data[8:9] != b"{":
            raise _refuse(f"looks like a {kind} (torch.save) file")
    if len(data) < 8:
        raise _refuse(f"{len(data)} bytes is too short for a safetensors header")
    (length,) = struct.unpack("<Q", data[:8])
    if length > _MAX_HEADER or length > len(data) - 8:
        raise _refuse(f"header length {length} does not fit a {len(data)}-byte file")
    try:
        header = json.loads(data[8 : 8 + length].decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise _refuse("the header is not JSON") from None
    if not isinstance(header, dict):
        raise _refuse("the header is not a JSON object")
    ends = [0]
    for key, entry in header.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if key != "__metadata__" and not (isinstance(offsets, list) and len(offsets) == 2
                                          and all(type(o) is int for o in offsets)):
            raise _refuse(f"tensor entry {key[:40]!r} is malformed")
        ends.append(offsets[1] if key != "__metadata__" else 0)
    if max(ends) != len(data) - 8 - length:
        raise _refuse("the file is truncated or has trailing bytes")
    return header


def read_header(data: bytes) -> dict[str, Any]:
    """Parse the metadata of an SCV model file without loading its tensors."""
    meta = _raw_header(data).get("__metadata__")
    if not isinstance(meta, dict):
        raise _refuse("it has no safetensors metadata")
    if meta.get("format") != FORMAT:
        raise _refuse(f"its format is {meta.get('format')!r}")
    result: dict[str, Any] = {}
    for key in _TEXT_FIELDS + _JSON_FIELDS:
        if not isinstance(meta.get(key), str):
            raise _refuse(f"its metadata lacks {key!r}")
        try:
            result[key] = json.loads(meta[key]) if key in _JSON_FIELDS else meta[key]
        except (ValueError, RecursionError):
            raise _refuse(f"its metadata field {key!r} is not JSON") from None
    shape, classes, norm = result["input_shape"], result["classes"], result["normalization"]
    if not (isinstance(shape, list) and len(shape) == 3 and all(type(n) is int and n > 0 for n in shape)):
        raise _refuse("input_shape is not three positive integers")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise _refuse("classes is not a list of names")
    if not (isinstance(norm, dict) and all(
        isinstance(norm.get(k), list) and len(norm[k]) == shape[0]
        and all(type(v) in (int, float) for v in norm[k]) for k in ("mean", "std")
    )):
        raise _refuse("normalization is not {mean, std} with one number per channel")
    return result


def load_model_with_header(
    path_or_bytes: str | os.PathLike[str] | bytes,
) -> tuple[nn.Sequential, dict[str, Any]]:
    """Rebuild the Sequential (eval mode) from a model file, and return it with the file's metadata."""
    if isinstance(path_or_bytes, bytes | bytearray):
        data = bytes(path_or_bytes)
    else:
        data = Path(path_or_bytes).read_bytes()
    header = read_header(data)
    try:
        # resolving again proves the layers are allow-listed, fit the input shape and are complete
        resolved = resolve_layers(header["layers"], input_shape=tuple(header["input_shape"]),
                                  num_classes=len(header["classes"]))
    except LayerSpecError as exc:
        raise _refuse(f"its layers are invalid ({exc})") from None
    if resolved != header["layers"]:
        raise _refuse("its layers are not fully resolved")
    model = build_sequential(resolved)
    try:
        tensors = safetensors.torch.load(data)
        model.load_state_dict(tensors, strict=True)
    except Exception as exc:  # safetensors' and torch's errors, shaped into one
        detail = " ".join(str(exc).split())[:400] or type(exc).__name__  # torch's message spans lines
        raise ModelFileError(f"the model file's tensors do not match its layers: {detail}") from None
    return model.eval(), header


def load_model(path_or_bytes: str | os.PathLike[str] | bytes) -> nn.Sequential:
    """Rebuild the Sequential (eval mode) from a model file alone, refusing anything else."""
    return load_model_with_header(path_or_bytes)[0]
