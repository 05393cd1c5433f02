"""Reading and writing `.safetensors` files one tensor at a time, with numpy only.

The format: 8 bytes (little-endian u64) giving the header length N, N bytes of JSON
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}`
(offsets relative to the end of the header), then the raw little-endian tensor bytes
(read and written as the host's own byte order, which is little-endian on every
platform jax supports).
Reading memory-maps the file, so a tensor is read from disk only when asked for and
the whole model never sits in host memory; bfloat16 comes back as `ml_dtypes.bfloat16`
(numpy has no bfloat16 of its own). Writing takes the header (names, shapes, dtypes)
up front and then one tensor at a time from a callback.

A model folder holds either `model.safetensors` or `model.safetensors.index.json`
(`{"weight_map": {name: shard file}}`) plus its shards.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Callable, Iterable

import ml_dtypes
import numpy as np

from jaxalign.errors import UserError

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in DTYPES.items()}
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


def _read_header(path: str) -> tuple[dict, int]:
  try:
    with open(path, "rb") as f:
      raw = f.read(8)
      if len(raw) != 8:
        raise UserError(f"{path}: not a safetensors file (too short)")
      (n,) = struct.unpack("<Q", raw)
      if n > os.path.getsize(path) - 8:
        raise UserError(f"{path}: not a safetensors file (header length {n} exceeds the file)")
      header = json.loads(f.read(n))
  except OSError as e:
    raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
  except (json.JSONDecodeError, UnicodeDecodeError):
    raise UserError(f"{path}: not a safetensors file (bad JSON header)") from None
  if not isinstance(header, dict):
    raise UserError(f"{path}: not a safetensors file (the header is not a JSON object)")
  data_bytes = os.path.getsize(path) - 8 - n
  for name, info in header.items():
    if name == "__metadata__":
      continue
    ok = (isinstance(info, dict) and isinstance(info.get("dtype"), str) and isinstance(info.get("shape"), list)
          and all(isinstance(d, int) and d >= 0 for d in info["shape"])
          and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2
          and all(isinstance(o, int) for o in info["data_offsets"]))
    if not ok:
      raise UserError(f"{path}: tensor {name}: malformed header entry (needs dtype, shape, data_offsets)")
    begin, end = info["data_offsets"]
    if not 0 <= begin <= end <= data_bytes:
      raise UserError(f"{path}: tensor {name}: bytes {begin}..{end} lie beyond the end of the file "
                      f"({data_bytes} data bytes): the file is truncated")
  return header, 8 + n


class SafetensorsFolder:
  """All tensors of a model folder (single file or sharded with an index), read lazily."""

  def __init__(self, folder: str):
    self.folder = folder
    index = os.path.join(folder, INDEX)
    single = os.path.join(folder, SINGLE)
    if os.path.isfile(index):
      try:
        with open(index) as f:
          weight_map = json.load(f)["weight_map"]
      except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{index}: cannot read the shard index ({e})") from None
      files = sorted(set(weight_map.values()))
    elif os.path.isfile(single):
      files = [SINGLE]
    else:
      raise UserError(f"{folder}: no {SINGLE} or {INDEX} (only safetensors checkpoints are read)")
    self._entries: dict[str, tuple[str, dict, int]] = {}
    self._maps: dict[str, np.memmap] = {}
    for name in files:
      path = os.path.join(folder, name)
      if not os.path.isfile(path):
        raise UserError(f"{path}: shard listed in {INDEX} is missing")
      header, start = _read_header(path)
      for key, info in header.items():
        if key != "__metadata__":
          self._entries[key] = (path, info, start)

  def names(self) -> list[str]:
    return list(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries

  def where(self, name: str) -> str:
    return self._entries[name][0]

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._entries[name][1]["shape"])

  def get(self, name: str) -> np.ndarray:
    """The tensor as a read-only array backed by the memory-mapped file (no copy yet)."""
    path, info, start = self._entries[name]
    if info["dtype"] not in DTYPES:
      raise UserError(f"{path}: tensor {name}: unsupported dtype {info['dtype']}")
    dt = DTYPES[info["dtype"]]
    begin, end = info["data_offsets"]
    shape = tuple(info["shape"])
    if end - begin != int(np.prod(shape, dtype=np.int64)) * dt.itemsize:
      raise UserError(f"{path}: tensor {name}: byte range does not match shape {shape} and {info['dtype']}")
    if path not in self._maps:
      self._maps[path] = np.memmap(path, dtype=np.uint8, mode="r")
    return self._maps[path][start + begin:start + end].view(dt).reshape(shape)


def write_file(path: str, entries: Iterable[tuple[str, tuple[int, ...], np.dtype]],
               produce: Callable[[str], np.ndarray], metadata: dict[str, str] | None = None) -> int:
  """Writes one safetensors file; `produce(name)` is called once per tensor, in order.

  Written to a temporary name and renamed, so a reader never sees half a file.
  Returns the number of tensor bytes written.
  """
  entries = list(entries)
  header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
  offset = 0
  for name, shape, dt in entries:
    n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize
    header[name] = {"dtype": _NAMES[np.dtype(dt)], "shape": list(shape), "data_offsets": [offset, offset + n]}
    offset += n
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for name, shape, dt in entries:
      arr = np.ascontiguousarray(produce(name))
      if arr.shape != tuple(shape) or arr.dtype != np.dtype(dt):
        raise ValueError(f"{name}: produced {arr.shape} {arr.dtype}, header says {tuple(shape)} {np.dtype(dt)}")
      f.write(arr.tobytes())
  os.replace(tmp, path)
  return offset


def write_folder(folder: str, entries: list[tuple[str, tuple[int, ...], np.dtype]],
                 produce: Callable[[str], np.ndarray], max_shard_bytes: int = 5 * 2**30) -> list[str]:
  """`model.safetensors`, or shards plus `model.safetensors.index.json` when over `max_shard_bytes`."""
  shards: list[list] = [[]]
  size = 0
  for e in entries:
    n = int(np.prod(e[1], dtype=np.int64)) * np.dtype(e[2]).itemsize
    if shards[-1] and size + n > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(e)
    size += n
  for stale in (SINGLE, INDEX):
    if os.path.exists(os.path.join(folder, stale)):
      os.remove(os.path.join(folder, stale))
  if len(shards) == 1:
    write_file(os.path.join(folder, SINGLE), shards[0], produce)
    return [SINGLE]
  names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
  weight_map, total = {}, 0
  for name, group in zip(names, shards):
    total += write_file(os.path.join(folder, name), group, produce)
    weight_map.update({e[0]: name for e in group})
  with open(os.path.join(folder, INDEX), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
  return names + [INDEX]
