"""Reading alignment data into plain dicts of Python strings.

Sources: JSONL files (preference, binary-feedback, SFT), Anthropic HH-RLHF
transcripts, and TFDS datasets stored as array_record. Tokenisation happens
elsewhere; every function here returns `list[dict]` of `str` (and `bool` labels).

All problems with user input raise `UserError` with a one-line message of the
form `path:line: what is wrong`.

TFDS without TensorFlow (checked against tensorflow-datasets 4.9.10):
- A `tfds.core.GeneratorBasedBuilder` subclass with Text features and
  `file_format="array_record"` prepares via `download_and_prepare` with no
  TensorFlow import (Text encodes with numpy; records are plain protobuf).
- `code_path` is overridden to None: TFDS computes it (to find a checksums
  file) via `importlib_resources`, which tfds 4.9.10 uses but only declares as
  a dependency for Python < 3.9, so it is missing on 3.11.
- `_info` builds `tfds.core.DatasetInfo(builder=self, ...)` directly:
  `dataset_info_from_configs` wants metadata files from a dataset package.
- The builder uses `skip_registration=True` and a per-instance name, so any
  name can be written without touching the global TFDS registry; reading goes
  through TFDS's read-only builder (dataset_info.json + features.json).
- `disable_shuffling=True` plus integer keys keeps examples in input order;
  otherwise TFDS orders records by a hash of the key.
- `tfds.dataset_builders.store_as_tfds_dataset` is not used: its adhoc builder
  probes `tf.data.Dataset` and hits the `importlib_resources` lookup above.
- `tfds.data_source(..., download=False)` reads the array_record files with
  no TensorFlow import and returns feature dicts whose Text values are bytes.
"""

from __future__ import annotations

import functools
import gzip
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jaxalign.errors import UserError, at

logger = logging.getLogger(__name__)

ASSISTANT = "\n\nAssistant:"
PREFERENCE_FIELDS = ("prompt", "chosen", "rejected")
_TFDS_VERSION = "1.0.0"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_SPLIT_RE = re.compile(r"^[A-Za-z0-9_]+$")


# ---------------------------------------------------------------- JSONL


def _type_name(value: Any) -> str:
  return "null" if value is None else type(value).__name__  # JSON's name for None.


def _iter_jsonl(path: str) -> Iterator[tuple[int, dict]]:
  """Yields `(line_number, object)` for each non-blank line (1-based)."""
  p = Path(path)
  if not p.exists():
    raise at(path, None, "file not found")
  if not p.is_file():
    raise at(path, None, "not a file")
  opener = gzip.open if str(path).endswith(".gz") else open
  # Binary mode so a decoding error is reported on the right line.
  with opener(p, "rb") as f:
    line_no = 0
    while True:
      try:
        raw = f.readline()
      except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError.
        raise at(path, line_no + 1, f"cannot read compressed data ({e})") from None
      if not raw:
        return
      line_no += 1
      try:
        text = raw.decode("utf-8")
      except UnicodeDecodeError:
        raise at(path, line_no, "invalid UTF-8") from None
      if not text.strip():
        continue
      try:
        obj = json.loads(text)
      except json.JSONDecodeError as e:
        raise at(path, line_no, f"invalid JSON ({e.msg})") from None
      if not isinstance(obj, dict):
        raise at(path, line_no, f"expected a JSON object, got {_type_name(obj)}")
      yield line_no, obj


def _get(obj: dict, field: str, kind: type, path: str, line: int, nonempty: bool = False) -> Any:
  """Returns `obj[field]`, checking presence, exact JSON type and emptiness."""
  if field not in obj:
    raise at(path, line, f'missing field "{field}"')
  value = obj[field]
  kind_name = {str: "a string", bool: "a bool"}[kind]
  if type(value) is not kind:  # `type is` so that ints never pass as bools.
    raise at(path, line, f'field "{field}" must be {kind_name}, got {_type_name(value)}')
  # Empty completions give zero-length sequences, which break per-token means.
  if nonempty and not value:
    raise at(path, line, f'field "{field}" must not be empty')
  return value


def _read_rows(path: str, convert) -> list[dict]:
  rows = [convert(obj, path, line) for line, obj in _iter_jsonl(path)]
  if not rows:
    raise at(path, None, "no examples")
  return rows


def _preference_row(obj: dict, path: str, line: int) -> dict:
  return {
      "prompt": _get(obj, "prompt", str, path, line),
      "chosen": _get(obj, "chosen", str, path, line, nonempty=True),
      "rejected": _get(obj, "rejected", str, path, line, nonempty=True),
  }


def _binary_row(obj: dict, path: str, line: int) -> dict:
  return {
      "prompt": _get(obj, "prompt", str, path, line),
      "completion": _get(obj, "completion", str, path, line, nonempty=True),
      "label": _get(obj, "label", bool, path, line),
  }


def _sft_row(obj: dict, path: str, line: int) -> dict:
  return {
      "prompt": _get(obj, "prompt", str, path, line),
      "completion": _get(obj, "completion", str, path, line, nonempty=True),
  }


def read_preference_jsonl(path: str) -> list[dict]:
  """Reads `{"prompt", "chosen", "rejected"}` rows (.jsonl or .jsonl.gz).

  Extra fields are dropped, blank lines skipped. `prompt` may be empty;
  `chosen` and `rejected` may not.
  """
  return _read_rows(path, _preference_row)


def _revision_row(obj: dict, path: str, line: int) -> dict:
  return {**_preference_row(obj, path, line), "revised": _get(obj, "revised", str, path, line, nonempty=True)}


def read_revision_jsonl(path: str) -> list[dict]:
  """Reads `{"prompt", "chosen", "rejected", "revised"}` rows (TLCR: `revised` is a minimal edit of `rejected`)."""
  return _read_rows(path, _revision_row)


def _list_row(obj: dict, path: str, line: int) -> dict:
  prompt = _get(obj, "prompt", str, path, line)
  for field in ("completions", "scores"):
    if field not in obj:
      raise at(path, line, f'missing field "{field}"')
    if not isinstance(obj[field], list):
      raise at(path, line, f'field "{field}" must be a list, got {_type_name(obj[field])}')
  comps, scores = obj["completions"], obj["scores"]
  if len(comps) != len(scores):
    raise at(path, line, f'fields "completions" and "scores" differ in length ({len(comps)} vs {len(scores)})')
  if len(comps) < 2:
    raise at(path, line, f'field "completions" needs at least 2 completions, got {len(comps)}')
  for i, (c, v) in enumerate(zip(comps, scores)):
    if type(c) is not str or not c:
      raise at(path, line, f'field "completions"[{i}] must be a non-empty string, got {_type_name(c) if type(c) is not str else "an empty string"}')
    if type(v) not in (int, float) or v != v or v in (float("inf"), float("-inf")):
      raise at(path, line, f'field "scores"[{i}] must be a finite number, got {json.dumps(v) if type(v) in (int, float) else _type_name(v)}')
  return {"prompt": prompt, "completions": list(comps), "scores": [float(v) for v in scores]}


def iter_objects(path: str) -> Iterator[tuple[int, dict]]:
  """`(line number, JSON object)` of each non-blank line of a JSONL(.gz) file; a line that is not a JSON object is
  a one-line error naming the file and line."""
  return _iter_jsonl(path)


def first_object(path: str) -> dict:
  """The first JSON object of a JSONL file ({} when it has none): to tell its format by its fields."""
  return next(_iter_jsonl(path), (0, {}))[1]


def read_list_jsonl(path: str) -> list[dict]:
  """Reads listwise rows `{"prompt", "completions": [...], "scores": [...]}` (higher score = better; any
  finite numbers, at least 2 completions, as many scores as completions)."""
  return _read_rows(path, _list_row)


def _joint_row(obj: dict, path: str, line: int) -> dict:
  if "chosen_prompt" in obj or "rejected_prompt" in obj:
    return {"chosen_prompt": _get(obj, "chosen_prompt", str, path, line, nonempty=True),
            "rejected_prompt": _get(obj, "rejected_prompt", str, path, line, nonempty=True),
            "chosen": _get(obj, "chosen", str, path, line, nonempty=True),
            "rejected": _get(obj, "rejected", str, path, line, nonempty=True)}
  row = _preference_row(obj, path, line)
  return {"chosen_prompt": row["prompt"], "rejected_prompt": row["prompt"], "chosen": row["chosen"],
          "rejected": row["rejected"]}


def read_joint_jsonl(path: str) -> list[dict]:
  """Reads JPO rows: `{"chosen_prompt", "chosen", "rejected_prompt", "rejected"}` (instruction–response pairs
  whose prompts may differ) or ordinary `{"prompt", "chosen", "rejected"}` rows (both prompts the same)."""
  return _read_rows(path, _joint_row)


def _negative_row(obj: dict, path: str, line: int) -> dict:
  return {"prompt": _get(obj, "prompt", str, path, line),
          "rejected": _get(obj, "rejected", str, path, line, nonempty=True)}


def read_negative_jsonl(path: str) -> list[dict]:
  """Reads D²O's human negatives `{"prompt", "rejected"}` (preference rows also work: their chosen is dropped)."""
  return _read_rows(path, _negative_row)


def read_binary_jsonl(path: str) -> list[dict]:
  """Reads `{"prompt", "completion", "label"}` rows; `label` is a JSON bool."""
  return _read_rows(path, _binary_row)


def read_sft_jsonl(path: str) -> list[dict]:
  """Reads `{"prompt", "completion"}` rows; `prompt` may be empty."""
  return _read_rows(path, _sft_row)


# ---------------------------------------------------------------- HH-RLHF


def split_hh_pair(chosen: str, rejected: str) -> tuple[str, str, str] | str:
  """Splits two HH-RLHF transcripts into `(prompt, chosen, rejected)`.

  The prompt runs through the last "\\n\\nAssistant:" that lies inside the
  common prefix of both transcripts. Returns a skip reason (a str) instead
  when there is no such marker, the completions are identical, or either
  completion is empty or whitespace.
  """
  n = 0
  limit = min(len(chosen), len(rejected))
  while n < limit and chosen[n] == rejected[n]:
    n += 1
  cut = chosen.rfind(ASSISTANT, 0, n)  # Whole marker must lie in [0, n).
  if cut < 0:
    return "no Assistant turn in common prefix"
  end = cut + len(ASSISTANT)
  prompt, c, r = chosen[:end], chosen[end:], rejected[end:]
  if c == r:
    return "identical completions"
  if not c.strip() or not r.strip():
    return "empty completion"
  return prompt, c, r


def _hh_rows(path: str) -> tuple[list[dict], dict[str, int], int]:
  """Returns (rows, skip counts by reason, total rows seen)."""
  rows, skipped, total = [], {}, 0
  for line, obj in _iter_jsonl(path):
    total += 1
    result = split_hh_pair(
        _get(obj, "chosen", str, path, line), _get(obj, "rejected", str, path, line)
    )
    if isinstance(result, str):
      skipped[result] = skipped.get(result, 0) + 1
      continue
    prompt, c, r = result
    rows.append({"prompt": prompt, "chosen": c, "rejected": r})
  return rows, skipped, total


def read_hh_rlhf(path: str) -> list[dict]:
  """Reads Anthropic HH-RLHF (.jsonl or .jsonl.gz) into preference rows.

  Input rows are `{"chosen": transcript, "rejected": transcript}`; output rows
  are `{"prompt", "chosen", "rejected"}` with `prompt + chosen` equal to the
  original chosen transcript (likewise rejected). Completions keep their
  leading space. Unusable pairs are skipped and counted in a logged warning.
  """
  rows, skipped, total = _hh_rows(path)
  if total == 0:
    raise at(path, None, "no examples")
  if skipped:
    detail = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items()))
    logger.warning(
        "%s: skipped %d of %d HH-RLHF rows (%s)", path, sum(skipped.values()), total, detail
    )
  if not rows:
    raise at(path, None, "no usable examples")
  return rows


def hh_rlhf_to_binary(rows: list[dict]) -> list[dict]:
  """Turns each preference pair into two unpaired binary rows.

  The chosen completion gets `label=True`, the rejected one `label=False`;
  they stay adjacent, chosen first.
  """
  out = []
  for row in rows:
    out.append({"prompt": row["prompt"], "completion": row["chosen"], "label": True})
    out.append({"prompt": row["prompt"], "completion": row["rejected"], "label": False})
  return out


# ---------------------------------------------------------------- TFDS


@functools.cache
def _builder_cls():
  """Defines the builder class on first use so tfds is imported lazily."""
  import tensorflow_datasets as tfds

  class _PreferenceBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Writes in-memory `{split: [example]}` as prompt/chosen/rejected Text."""

    VERSION = tfds.core.Version(_TFDS_VERSION)
    RELEASE_NOTES = {_TFDS_VERSION: "Written by jaxalign."}
    # No source dir (hence no checksums file). TFDS's own lookup touches
    # `importlib_resources`, which tfds 4.9.10 only installs on Python < 3.9.
    code_path = None

    def __init__(self, *, name: str, splits: dict[str, list[dict]], **kwargs):
      self.name = name  # Per instance: the class itself is never registered.
      self._splits = splits
      super().__init__(**kwargs)

    def _info(self):
      text = tfds.features.Text
      return tfds.core.DatasetInfo(
          builder=self,
          description="Preference pairs (prompt, chosen, rejected) written by jaxalign.",
          features=tfds.features.FeaturesDict({k: text() for k in PREFERENCE_FIELDS}),
          disable_shuffling=True,  # Keep input order (integer keys).
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._examples(rows) for split, rows in self._splits.items()}

    def _examples(self, rows: list[dict]):
      for i, row in enumerate(rows):
        yield i, {k: row[k] for k in PREFERENCE_FIELDS}

    def _generate_examples(self, **kwargs):
      raise NotImplementedError  # Splits come from `_examples`.

  return _PreferenceBuilder


def _check_preference_rows(rows: list[dict], where: str) -> None:
  if not rows:
    raise at(where, None, "no examples")
  for i, row in enumerate(rows):
    for k in PREFERENCE_FIELDS:
      if not isinstance(row.get(k), str):
        raise at(where, None, f'example {i}: field "{k}" must be a string, '
                 f"got {_type_name(row.get(k))}")


def _check_name(name: str, split: str) -> None:
  if not _NAME_RE.match(name):
    raise UserError(f'TFDS name "{name}" must be snake_case (a-z, 0-9, _), '
                    "starting with a letter")
  if not _SPLIT_RE.match(split):
    raise UserError(f'TFDS split "{split}" must contain only letters, digits and _')


def write_tfds_preference(
    examples: list[dict],
    data_dir: str,
    name: str = "jaxalign_preference",
    split: str = "train",
) -> str:
  """Writes preference examples as a TFDS array_record dataset; returns its dir.

  The result is `data_dir/name/1.0.0/`, readable with
  `tfds.data_source(name, data_dir=data_dir, split=split)`. Other splits
  already stored there are kept; an existing copy of `split` is replaced.
  """
  _check_name(name, split)
  _check_preference_rows(examples, f"{name}/{split}")
  import tensorflow_datasets as tfds

  version_dir = Path(data_dir) / name / _TFDS_VERSION
  splits = {split: examples}
  if (version_dir / "dataset_info.json").exists():
    # A TFDS version dir is written as a whole, so carry the other splits over.
    for old in tfds.builder_from_directory(str(version_dir)).info.splits:
      if old != split:
        splits[old] = read_tfds(name, data_dir, old)
  # Build in a fresh dir beside the target, then swap: TFDS cannot prepare
  # over an existing version dir (it reuses it, or with FORCE_REDOWNLOAD
  # deletes it and then fails because the restored DatasetInfo is frozen).
  Path(data_dir).mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=data_dir, prefix=".jaxalign-tfds-") as tmp:
    builder = _builder_cls()(
        name=name, splits=splits, data_dir=tmp, file_format="array_record"
    )
    # The download dir would otherwise appear as `<data_dir>/downloads/`.
    builder.download_and_prepare(download_dir=os.path.join(tmp, "downloads"))
    old = Path(tmp) / "old"
    if version_dir.exists():
      version_dir.rename(old)
    version_dir.parent.mkdir(parents=True, exist_ok=True)
    Path(builder.data_dir).rename(version_dir)
  return str(version_dir)


def _to_python(value: Any) -> Any:
  """Decodes TFDS numpy output: bytes -> str, numpy scalars -> Python."""
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, dict):
    return {k: _to_python(v) for k, v in value.items()}
  if hasattr(value, "item") and getattr(value, "shape", None) == ():
    return _to_python(value.item())
  return value


def read_tfds(name: str, data_dir: str, split: str = "train") -> list[dict]:
  """Reads a prepared TFDS dataset via `tfds.data_source`, in index order.

  Never downloads or prepares anything; text comes back as `str`.
  """
  if not Path(data_dir).is_dir():
    raise at(data_dir, None, "TFDS data_dir not found")
  # `name` may carry a config or version ("name/config:1.0.0").
  base = name.split(":")[0].split("/")[0]
  where = os.path.join(data_dir, base)
  if not base or not Path(where).is_dir():
    raise at(where, None, f'TFDS dataset "{name}" not found')
  import tensorflow_datasets as tfds

  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # TFDS errors are multi-line; keep the first line.
    first = (str(e).strip() or type(e).__name__).splitlines()[0]
    raise at(where, None, f'cannot open TFDS dataset "{name}" ({first})') from None
  available = ", ".join(builder.info.splits) or "none"
  if split not in builder.info.splits:
    raise at(where, None, f'TFDS dataset "{name}" has no split "{split}" (available: {available})')
  source = tfds.data_source(name, data_dir=data_dir, split=split, download=False)
  rows, batch = [], 1024
  for start in range(0, len(source), batch):
    keys = list(range(start, min(start + batch, len(source))))
    rows.extend(_to_python(x) for x in source.__getitems__(keys))
  return rows


# ---------------------------------------------------------------- dispatch


def _split_tfds_path(path: str) -> tuple[str, str]:
  """`"DATA_DIR"` or `"DATA_DIR:NAME"` -> (data_dir, name)."""
  head, sep, tail = path.rpartition(":")
  # "gs://bucket/dir" has a colon but no name: a name never contains "/".
  if sep and head and tail and "/" not in tail:
    return head, tail
  return path, "jaxalign_preference"


def load_preference(source: str, path: str, split: str = "train") -> list[dict]:
  """Loads preference rows `{"prompt", "chosen", "rejected"}` from a source.

  `source` is "jsonl", "hh_rlhf" or "tfds". For "tfds", `path` is
  `"DATA_DIR"` (dataset name `jaxalign_preference`) or `"DATA_DIR:NAME"`.
  `split` applies to "tfds" only.
  """
  if source == "jsonl":
    return read_preference_jsonl(path)
  if source == "hh_rlhf":
    return read_hh_rlhf(path)
  if source == "tfds":
    data_dir, name = _split_tfds_path(path)
    rows = read_tfds(name, data_dir, split)
    _check_preference_rows(rows, f"{os.path.join(data_dir, name)}[{split}]")
    return [{k: row[k] for k in PREFERENCE_FIELDS} for row in rows]
  raise UserError(f'unknown data source "{source}" (expected one of: jsonl, hh_rlhf, tfds)')
