"""Tests for jaxalign.data.sources: JSONL, HH-RLHF and TFDS readers."""

import gzip
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxalign.data import sources
from jaxalign.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SHARED_HH = Path(__file__).resolve().parents[2] / "shared/data/hh-rlhf/harmless-base-test.jsonl.gz"
A = "\n\nAssistant:"
H = "\n\nHuman:"


def write_lines(path: Path, lines: list[str]) -> str:
  data = "\n".join(lines) + "\n"
  if str(path).endswith(".gz"):
    with gzip.open(path, "wt", encoding="utf-8") as f:
      f.write(data)
  else:
    path.write_text(data, encoding="utf-8")
  return str(path)


def error_of(fn, *args) -> str:
  with pytest.raises(UserError) as info:
    fn(*args)
  message = str(info.value)
  assert "\n" not in message
  return message


# ---------------------------------------------------------------- JSONL


PAIRS = [
    {"prompt": "Q: 2+2?", "chosen": " 4", "rejected": " 5"},
    {"prompt": "", "chosen": "héllo 日本", "rejected": "bye\nnow"},
]


@pytest.mark.parametrize("name", ["train.jsonl", "train.jsonl.gz"])
def test_preference_round_trip(tmp_path, name):
  lines = [json.dumps({**PAIRS[0], "id": 7}), "", "   ", json.dumps(PAIRS[1])]
  path = write_lines(tmp_path / name, lines)
  assert sources.read_preference_jsonl(path) == PAIRS  # Extra "id" dropped.
  assert sources.load_preference("jsonl", path) == PAIRS


def test_binary_and_sft_round_trip(tmp_path):
  binary = [{"prompt": "p", "completion": " a", "label": True},
            {"prompt": "p", "completion": " b", "label": False}]
  path = write_lines(tmp_path / "b.jsonl", [json.dumps(r) for r in binary])
  assert sources.read_binary_jsonl(path) == binary
  sft = [{"prompt": "", "completion": "text"}, {"prompt": "p", "completion": " c"}]
  path = write_lines(tmp_path / "s.jsonl.gz", [json.dumps(r) for r in sft])
  assert sources.read_sft_jsonl(path) == sft


def test_jsonl_errors(tmp_path):
  ok = json.dumps(PAIRS[0])
  read = sources.read_preference_jsonl
  p = write_lines(tmp_path / "a.jsonl", [ok, "", json.dumps({"prompt": "x", "rejected": "y"})])
  assert error_of(read, p) == f'{p}:3: missing field "chosen"'

  p = write_lines(tmp_path / "b.jsonl", [ok, ok, '{"prompt": "a" "chosen": "b"}'])
  assert error_of(read, p) == f"{p}:3: invalid JSON (Expecting ',' delimiter)"

  p = write_lines(tmp_path / "c.jsonl", [ok, json.dumps({**PAIRS[0], "prompt": 3})])
  assert error_of(read, p) == f'{p}:2: field "prompt" must be a string, got int'

  p = write_lines(tmp_path / "d.jsonl", [json.dumps({**PAIRS[0], "chosen": None})])
  assert error_of(read, p) == f'{p}:1: field "chosen" must be a string, got null'

  p = write_lines(tmp_path / "e.jsonl", [ok, "[1, 2]"])
  assert error_of(read, p) == f"{p}:2: expected a JSON object, got list"

  p = write_lines(tmp_path / "f.jsonl", [json.dumps({**PAIRS[0], "rejected": ""})])
  assert error_of(read, p) == f'{p}:1: field "rejected" must not be empty'

  missing = str(tmp_path / "x.jsonl")
  assert error_of(sources.read_preference_jsonl, missing) == f"{missing}: file not found"

  empty = tmp_path / "empty.jsonl"
  empty.write_text("\n  \n")
  assert error_of(sources.read_sft_jsonl, str(empty)) == f"{empty}: no examples"

  bad = tmp_path / "bad.jsonl"
  bad.write_bytes(json.dumps(PAIRS[0]).encode() + b'\n{"prompt": "\xff"}\n')
  assert error_of(sources.read_preference_jsonl, str(bad)) == f"{bad}:2: invalid UTF-8"


def test_binary_label_must_be_bool(tmp_path):
  row = {"prompt": "p", "completion": "c", "label": True}
  p = write_lines(tmp_path / "a.jsonl", [json.dumps(row), json.dumps({**row, "label": 1})])
  assert error_of(sources.read_binary_jsonl, p) == f'{p}:2: field "label" must be a bool, got int'
  p = write_lines(tmp_path / "b.jsonl", [json.dumps({**row, "label": "true"})])
  assert error_of(sources.read_binary_jsonl, p) == f'{p}:1: field "label" must be a bool, got str'
  p = write_lines(tmp_path / "c.jsonl", [json.dumps({"prompt": "p", "completion": "c"})])
  assert error_of(sources.read_binary_jsonl, p) == f'{p}:1: missing field "label"'


def test_sft_completion_required(tmp_path):
  p = write_lines(tmp_path / "a.jsonl", [json.dumps({"prompt": "p", "completion": ""})])
  assert error_of(sources.read_sft_jsonl, p) == f'{p}:1: field "completion" must not be empty'


# ---------------------------------------------------------------- HH-RLHF


HISTORY = f"{H} Hi there{A} Hello! How can I help?{H} How do I bake bread?{A}"
HH_ROWS = [
    # Same history, differ in the final Assistant turn.
    {"chosen": HISTORY + " Sure, here is a recipe.", "rejected": HISTORY + " Sorry, no."},
    # Diverge in an earlier Assistant turn: the prompt ends at the first one.
    {"chosen": f"{H} Q1{A} Good answer.{H} Q2{A} More.",
     "rejected": f"{H} Q1{A} Bad answer.{H} Q2{A} More."},
    # Diverge inside a Human turn, after one Assistant turn.
    {"chosen": f"{H} a{A} b{H} c is nice{A} d", "rejected": f"{H} a{A} b{H} c is bad{A} e"},
]
HH_SKIPPED = [
    {"chosen": f"{H} one{A} x", "rejected": f"{H} two{A} x"},   # No marker in prefix.
    {"chosen": f"{H} q{A} same", "rejected": f"{H} q{A} same"},  # Identical.
    {"chosen": f"{H} q{A} ", "rejected": f"{H} q{A} answer"},     # Empty completion.
]


def test_hh_rlhf_split(tmp_path, caplog):
  path = write_lines(tmp_path / "hh.jsonl", [json.dumps(r) for r in HH_ROWS + HH_SKIPPED])
  with caplog.at_level(logging.WARNING, logger="jaxalign.data.sources"):
    rows = sources.read_hh_rlhf(path)
  assert len(rows) == len(HH_ROWS)
  for row, original in zip(rows, HH_ROWS):
    assert row["prompt"].endswith(A)
    assert row["prompt"] + row["chosen"] == original["chosen"]
    assert row["prompt"] + row["rejected"] == original["rejected"]
  assert rows[0] == {"prompt": HISTORY, "chosen": " Sure, here is a recipe.",
                     "rejected": " Sorry, no."}
  assert rows[1]["prompt"] == f"{H} Q1{A}"
  assert rows[1]["chosen"] == f" Good answer.{H} Q2{A} More."
  assert rows[2]["prompt"] == f"{H} a{A}"
  assert "skipped 3 of 6" in caplog.text
  for reason in ("no Assistant turn in common prefix: 1", "identical completions: 1",
                 "empty completion: 1"):
    assert reason in caplog.text
  assert sources.load_preference("hh_rlhf", path) == rows


def test_hh_rlhf_errors(tmp_path):
  p = write_lines(tmp_path / "a.jsonl", [json.dumps(HH_ROWS[0]), json.dumps({"chosen": "x"})])
  assert error_of(sources.read_hh_rlhf, p) == f'{p}:2: missing field "rejected"'
  p = write_lines(tmp_path / "b.jsonl.gz", [json.dumps(r) for r in HH_SKIPPED])
  assert error_of(sources.read_hh_rlhf, p) == f"{p}: no usable examples"


def test_hh_rlhf_to_binary():
  pairs = [{"prompt": "p1", "chosen": " a", "rejected": " b"},
           {"prompt": "p2", "chosen": " c", "rejected": " d"}]
  rows = sources.hh_rlhf_to_binary(pairs)
  assert len(rows) == 4
  assert [r["label"] for r in rows] == [True, False, True, False]
  assert rows[0] == {"prompt": "p1", "completion": " a", "label": True}
  assert rows[3] == {"prompt": "p2", "completion": " d", "label": False}


def test_shared_hh_rlhf_file():
  if not SHARED_HH.exists():
    pytest.skip(f"{SHARED_HH} not present")
  rows = sources.read_hh_rlhf(str(SHARED_HH))
  assert len(rows) > 1000
  with gzip.open(SHARED_HH, "rt", encoding="utf-8") as f:
    originals = {(r["chosen"], r["rejected"]) for r in map(json.loads, f)}
  for row in rows:
    assert row["prompt"].endswith(A)
    assert (row["prompt"] + row["chosen"], row["prompt"] + row["rejected"]) in originals


# ---------------------------------------------------------------- TFDS


TFDS_EXAMPLES = [
    {"prompt": f"prompt {i} ü 日本語 🙂", "chosen": f" yes {i}", "rejected": f" no {i}\n"}
    for i in range(5)
]


def test_tfds_round_trip(tmp_path):
  data_dir = str(tmp_path / "tfds")
  out = sources.write_tfds_preference(TFDS_EXAMPLES, data_dir)
  assert Path(out) == Path(data_dir) / "jaxalign_preference" / "1.0.0"
  assert sources.read_tfds("jaxalign_preference", data_dir) == TFDS_EXAMPLES
  assert "tensorflow" not in sys.modules
  assert sources.load_preference("tfds", data_dir) == TFDS_EXAMPLES

  # A second split keeps the first; rewriting a split replaces only it.
  sources.write_tfds_preference(TFDS_EXAMPLES[:2], data_dir, name="prefs", split="test")
  sources.write_tfds_preference(TFDS_EXAMPLES[2:], data_dir, name="prefs", split="train")
  assert sources.load_preference("tfds", f"{data_dir}:prefs", "test") == TFDS_EXAMPLES[:2]
  assert sources.read_tfds("prefs", data_dir, "train") == TFDS_EXAMPLES[2:]
  sources.write_tfds_preference(TFDS_EXAMPLES[:1], data_dir, name="prefs", split="train")
  assert sources.read_tfds("prefs", data_dir, "train") == TFDS_EXAMPLES[:1]
  assert sources.read_tfds("prefs", data_dir, "test") == TFDS_EXAMPLES[:2]
  assert sorted(os.listdir(data_dir)) == ["jaxalign_preference", "prefs"]  # No leftovers.


def test_tfds_real_api_without_tensorflow(tmp_path):
  """A fresh process writes, then reads with tfds.data_source itself."""
  data_dir = str(tmp_path / "tfds")
  code = f"""
import sys
from jaxalign.data import sources
import tensorflow_datasets as tfds
examples = {TFDS_EXAMPLES!r}
sources.write_tfds_preference(examples, {data_dir!r}, name="mine")
ds = tfds.data_source("mine", data_dir={data_dir!r}, split="train", download=False)
got = [{{k: v.decode() for k, v in ds[i].items()}} for i in range(len(ds))]
assert got == examples, got
assert sources.read_tfds("mine", {data_dir!r}) == examples
assert "tensorflow" not in sys.modules, "tensorflow was imported"
print("ok")
"""
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip().endswith("ok")


def test_tfds_errors(tmp_path):
  missing = str(tmp_path / "nope")
  assert error_of(sources.read_tfds, "x", missing) == f"{missing}: TFDS data_dir not found"
  data_dir = str(tmp_path / "tfds")
  sources.write_tfds_preference(TFDS_EXAMPLES, data_dir)
  assert error_of(sources.read_tfds, "other", data_dir) == (
      f'{os.path.join(data_dir, "other")}: TFDS dataset "other" not found')
  message = error_of(sources.read_tfds, "jaxalign_preference", data_dir, "validation")
  assert message.endswith('has no split "validation" (available: train)')
  write = sources.write_tfds_preference
  assert "must be snake_case" in error_of(write, TFDS_EXAMPLES, data_dir, "Bad-Name")
  assert error_of(write, [], data_dir) == "jaxalign_preference/train: no examples"
  bad = [{"prompt": "p", "chosen": 1, "rejected": "r"}]
  assert error_of(write, bad, data_dir) == (
      'jaxalign_preference/train: example 0: field "chosen" must be a string, got int')


def test_load_preference_unknown_source(tmp_path):
  message = error_of(sources.load_preference, "csv", str(tmp_path))
  assert message == 'unknown data source "csv" (expected one of: jsonl, hh_rlhf, tfds)'
