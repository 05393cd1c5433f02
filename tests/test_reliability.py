"""Reliability: bad input anywhere ends in one `error:` line, a damaged checkpoint or cache is never
used, a live run holds its workdir, a write that fails (a full disk) stops cleanly.

The fuzz test feeds a seeded few hundred corrupted data files, Hugging Face folders and configs to
the functions the CLI calls at its edge, in this process: each must load or raise a `UserError`
(which `jaxalign.main` prints as one line) naming the file; anything else would be a traceback.
"""

import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from cli import ROOT, assert_same_rows, cmd, error_line, final, rows, run
from jaxalign import workdir as wd_lib
from jaxalign.config import base_config, validate
from jaxalign.data import builtin, pipeline, sources
from jaxalign.errors import UserError


# ---------------------------------------------------------------- the fuzz test

def _byte_mutations(rng, data: bytes, n: int):
  """`n` (name, bytes) corruptions: truncations, bit flips, garbage and invalid UTF-8 spliced in, cuts."""
  out = []
  for i in range(n):
    kind = ["truncate", "flip", "splice", "cut", "invalid_utf8"][i % 5]
    b = bytearray(data)
    pos = int(rng.integers(0, max(1, len(b))))
    if kind == "truncate":
      b = b[:pos]
    elif kind == "flip":
      for _ in range(int(rng.integers(1, 4))):
        j = int(rng.integers(0, len(b)))
        b[j] ^= 1 << int(rng.integers(0, 8))
    elif kind == "splice":
      b[pos:pos] = bytes(rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8))
    elif kind == "cut":
      b = b[:pos] + b[pos + int(rng.integers(1, 64)):]
    else:
      b[pos:pos] = b"\xff\xfe\xc3"
    out.append((f"{kind}@{pos}", bytes(b)))
  return out


WRONG = [None, 7, 3.5, True, [], ["a"], {}, {"a": 1}, "", "   "]


def _row_mutations(rng, rows: list[dict], n: int):
  """`n` (name, bytes) structural corruptions of a JSONL file: a field dropped, of the wrong type or empty,
  a row that is not an object, blank and duplicate lines, a BOM, an empty file."""
  out = [("empty", b""), ("blank_lines", b"\n \n\t\n"), ("bom", b"\xef\xbb\xbf" + _jsonl(rows))]
  while len(out) < n:
    rs = [dict(r) for r in rows]
    i = int(rng.integers(0, len(rs)))
    key = list(rs[i])[int(rng.integers(0, len(rs[i])))]
    op = int(rng.integers(0, 4))
    if op == 0:
      del rs[i][key]
      name = f"drop:{key}@{i}"
    elif op == 1:
      rs[i][key] = WRONG[int(rng.integers(0, len(WRONG)))]
      name = f"type:{key}={rs[i][key]!r}@{i}"
    elif op == 2:
      rs[i] = [rs[i]] if rng.random() < 0.5 else "row"
      name = f"not_object@{i}"
    else:
      for r in rs:
        r[key] = WRONG[int(rng.integers(0, len(WRONG)))]
      name = f"all:{key}"
    out.append((name, _jsonl(rs)))
  return out


def _jsonl(rows) -> bytes:
  return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _expect_clean(where: str, name: str, fn):
  """`fn()` must succeed or raise a UserError naming `where`; anything else is a defect."""
  try:
    fn()
  except UserError as e:
    msg = str(e)
    assert "\n" not in msg and where in msg, (name, msg)
    return "error"
  except Exception as e:  # noqa: BLE001
    raise AssertionError(f"{where} [{name}]: {type(e).__name__}: {e}") from e
  return "ok"


@pytest.fixture(scope="module")
def sp_tok(tmp_path_factory):
  return builtin.builtin_tokenizer(str(tmp_path_factory.mktemp("tok")))


def test_fuzz_data_files(tmp_path, sp_tok):
  rng = np.random.default_rng(0)
  pairs = builtin.preference_pairs(12, seed=0)
  pref = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in pairs]
  binary = [{"prompt": r["prompt"], "completion": r["chosen"], "label": bool(i % 2)} for i, r in enumerate(pref)]
  sft = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in pref]
  revisions = [{**r, "revised": r["rejected"].replace("poor", "good")} for r in pref]
  hh = [{"chosen": f"\n\nHuman: {r['prompt']}\n\nAssistant: {r['chosen']}",
         "rejected": f"\n\nHuman: {r['prompt']}\n\nAssistant: {r['rejected']}"} for r in pref]

  def tok_pref(rows):
    pipeline.tokenize_preference(sp_tok, rows, 16, 24)

  readers = {
      "pref.jsonl": (pref, lambda p: tok_pref(sources.load_preference("jsonl", p))),
      "hh.jsonl": (hh, lambda p: tok_pref(sources.load_preference("hh_rlhf", p))),
      "binary.jsonl": (binary, lambda p: pipeline.tokenize_binary(sp_tok, sources.read_binary_jsonl(p), 16, 24)),
      "sft.jsonl": (sft, lambda p: pipeline.tokenize_sft(sp_tok, sources.read_sft_jsonl(p), 16, 24)),
      "revisions.jsonl": (revisions, sources.read_revision_jsonl),
  }
  outcomes = {"ok": 0, "error": 0}
  for fname, (rows_, read) in readers.items():
    base = _jsonl(rows_)
    path = str(tmp_path / fname)
    cases = _byte_mutations(rng, base, 30) + _row_mutations(rng, rows_, 30)
    for name, data in cases:
      with open(path, "wb") as f:
        f.write(data)
      outcomes[_expect_clean(path, f"{fname} {name}", lambda: read(path))] += 1
    # a gzip-compressed file that is truncated
    import gzip
    gz = path + ".gz"
    blob = gzip.compress(base)
    with open(gz, "wb") as f:
      f.write(blob[:len(blob) // 2])
    outcomes[_expect_clean(gz, f"{fname}.gz truncated", lambda: read(gz))] += 1
  print(f"data files: {outcomes}")
  assert outcomes["error"] > 150 and outcomes["ok"] > 10, outcomes  # the generator exercises both sides
  # the message names the line and the field
  with open(path, "wb") as f:
    f.write(_jsonl(pref[:3]) + b'{"prompt": "a", "chosen": 5, "rejected": "b"}\n')
  with pytest.raises(UserError, match=rf'^{path}:4: field "chosen" must be a string, got int'):
    sources.load_preference("jsonl", path)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory, sp_tok):
  """A random nano model saved as a Hugging Face folder with the built-in sentencepiece tokenizer."""
  from jaxalign.models import hf
  from jaxalign import sharding as shd
  from jaxalign.models.loading import init_params
  from jaxalign.models.transformer import model_config
  cfg = model_config("nano", vocab_size=sp_tok.vocab_size)
  params = init_params(cfg, jax.random.key(0), shd.make_mesh())
  folder = str(tmp_path_factory.mktemp("hf"))
  hf.save_hf(cfg, params, folder, tokenizer=sp_tok)
  return folder


def test_fuzz_hugging_face_folders(tmp_path, hf_folder):
  from jaxalign.data.hf_tokenizer import HFTokenizer
  from jaxalign.models import hf
  rng = np.random.default_rng(1)
  names = sorted(os.listdir(hf_folder))
  assert "model.safetensors" in names and "config.json" in names, names
  outcomes = {"ok": 0, "error": 0}

  def load(folder):
    cfg = hf.config_from_hf(hf.read_config(folder), os.path.join(folder, "config.json"))
    params = hf.load_params(folder, cfg)
    jax.block_until_ready(params)

  for fname, n in (("model.safetensors", 60), ("config.json", 40)):
    with open(os.path.join(hf_folder, fname), "rb") as f:
      base = f.read()
    if fname == "model.safetensors":  # bit flips and cuts in the header, where they change its meaning
      (hlen,) = np.frombuffer(base[:8], "<u8")
      cases = _byte_mutations(rng, base, n // 2)
      cases += [(f"header {nm}", d + base[8 + int(hlen):]) for nm, d in _byte_mutations(rng, base[:8 + int(hlen)], n // 2)]
    else:
      hf_cfg = json.loads(base)
      cases = _byte_mutations(rng, base, n // 2)
      for i in range(n // 2):
        c = dict(hf_cfg)
        key = sorted(c)[int(rng.integers(0, len(c)))]
        if i % 2:
          del c[key]
        else:
          c[key] = WRONG[int(rng.integers(0, len(WRONG)))]
        cases.append((f"{key}", json.dumps(c).encode()))
    for name, data in cases:
      folder = str(tmp_path / "m")
      shutil.rmtree(folder, ignore_errors=True)
      shutil.copytree(hf_folder, folder)
      with open(os.path.join(folder, fname), "wb") as f:
        f.write(data)
      outcomes[_expect_clean(folder, f"{fname} {name}", lambda: load(folder))] += 1
  # tokenizer files: missing, truncated, not JSON
  for fname in [n for n in names if n.startswith("tokenizer")]:
    for name, data in [("missing", None), ("truncated", b'{"a": '), ("not json", b"\x00\xff")]:
      folder = str(tmp_path / "t")
      shutil.rmtree(folder, ignore_errors=True)
      shutil.copytree(hf_folder, folder)
      p = os.path.join(folder, fname)
      if data is None:
        os.remove(p)
      else:
        with open(p, "wb") as f:
          f.write(data)
      outcomes[_expect_clean(folder, f"{fname} {name}", lambda: HFTokenizer(folder))] += 1
  print(f"Hugging Face folders: {outcomes}")
  assert outcomes["error"] > 50, outcomes


def test_fuzz_config_values():
  """Every number of every shipped config set to a wrong value: validation passes or raises a UserError
  naming `config <key>`; NaN and out-of-range values never get past it."""
  import importlib.util
  import glob
  import math
  from jaxalign import trainers
  rejected = tried = 0
  for f in sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))):
    spec = importlib.util.spec_from_file_location("cfg", f)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    c = m.get_config("tiny")
    flat = {}

    def walk(d, pre=""):
      for k, v in d.items():
        if hasattr(v, "items"):
          walk(v, pre + k + ".")
        else:
          flat[pre + k] = v
    walk(c)
    for key, v in flat.items():
      if isinstance(v, bool) or not isinstance(v, (int, float)):
        continue
      for nv in ([-1, 0] if isinstance(v, int) else [-1.0, 0.0, float("nan"), float("inf")]):
        tried += 1
        cc = c.copy_and_resolve_references()
        sect = cc
        for part in key.split(".")[:-1]:
          sect = sect[part]
        with cc.unlocked():
          sect[key.split(".")[-1]] = nv
        try:
          validate(cc)
          trainers.check(cc)
        except UserError as e:
          assert str(e).startswith("config ") and "\n" not in str(e), (f, key, nv, str(e))
          rejected += 1
          continue
        except Exception as e:  # noqa: BLE001
          raise AssertionError(f"{f} {key}={nv!r}: {type(e).__name__}: {e}") from e
        assert not (isinstance(nv, float) and not math.isfinite(nv)), (f, key, nv, "accepted")
  print(f"config values: {tried} tried, {rejected} rejected")
  assert rejected > 500, rejected
  c = base_config()
  c.eval.top_p = 1.5
  with pytest.raises(UserError, match=r"^config eval.top_p: 1.5 is out of range \(0, 1\]$"):
    validate(c)


# ---------------------------------------------------------------- the CLI, as a user's mistakes would hit it

RANDOM_INIT = ["--config.init_from=", "--config.eval.samples_per_prompt=1"]  # no SFT stage


def test_workdir_that_is_a_file_or_cannot_be_made(tmp_path):
  f = tmp_path / "run.txt"
  f.write_text("my notes\n")
  line = error_line(run(str(f), *RANDOM_INIT, check=False))
  assert line == f"error: {f}: exists and is not a directory (--workdir must be a directory)"
  assert f.read_text() == "my notes\n"  # untouched
  line = error_line(run("/proc/self/run", *RANDOM_INIT, check=False))
  assert line.startswith("error: /proc/self/run: cannot create the run directory"), line


def test_a_live_run_holds_its_workdir(tmp_path):
  """A second process on a held workdir is refused (naming host and pid); once the holder is killed,
  its lock is taken over."""
  wd = str(tmp_path / "run")
  holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from jaxalign import workdir; "
                             "workdir.hold(sys.argv[1]); print('held', flush=True); time.sleep(600)", wd],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    line = error_line(run(wd, *RANDOM_INIT, check=False))
    import socket
    assert line.startswith(f"error: {wd}: held by a live run (host {socket.gethostname()}, pid {holder.pid}, "), line
    assert not os.path.exists(os.path.join(wd, "config.json"))  # the refused run wrote nothing
    assert holder.poll() is None
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  wd_lib.hold(wd)  # the killed holder's lock is taken over
  with open(os.path.join(wd, wd_lib.LOCK)) as f:
    assert json.load(f)["pid"] == os.getpid()
  wd_lib.release(wd)


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory):
  """A tiny DPO run from a random init (checkpoints at steps 3 and 6)."""
  wd = str(tmp_path_factory.mktemp("dpo") / "run")
  p = run(wd, *RANDOM_INIT)
  return wd, final(p)


def _damage(step_dir, every=False):
  """Cuts the largest array file of a checkpoint (`every`: each of its data files) to half its length."""
  files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "state")) for f in fs
           if os.sep + "d" + os.sep in os.path.join(r, f)]
  for path in (files if every else [max(files, key=os.path.getsize)]):
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)


def test_damaged_newest_checkpoint_falls_back_to_the_one_before(dpo_run, tmp_path):
  full, out = dpo_run
  wd = str(tmp_path / "run")
  shutil.copytree(full, wd)
  _damage(os.path.join(wd, "checkpoints", "6"))
  p = run(wd, *RANDOM_INIT)
  assert f"warning: {wd}/checkpoints/6: damaged checkpoint" in p.stderr, p.stderr[-3000:]
  assert final(p) == out  # resumed from step 3 and reached the same end
  assert_same_rows(rows(wd), rows(full))
  assert sorted(os.listdir(os.path.join(wd, "damaged_checkpoints")))[0].startswith("6-")
  # every checkpoint damaged: one line, nothing else touched
  for s in ("3", "6"):
    _damage(os.path.join(wd, "checkpoints", s))
  before = rows(wd)
  line = error_line(run(wd, *RANDOM_INIT, check=False))
  assert line.startswith(f"error: {wd}/checkpoints: no intact checkpoint (damaged: steps 6, 3"), line
  assert rows(wd) == before


def test_checkpoints_of_another_model_are_an_error_and_kept(dpo_run, tmp_path):
  full, _ = dpo_run
  wd = str(tmp_path / "run")
  shutil.copytree(full, wd)
  line = error_line(run(wd, *RANDOM_INIT, "--config.model.preset=tiny", check=False))
  assert line.startswith(f"error: {wd}/checkpoints/6: this checkpoint holds another model or trainer's state"), line
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["3", "6"]
  assert not os.path.exists(os.path.join(wd, "damaged_checkpoints"))
  line = error_line(run(str(tmp_path / "b"), f"--config.init_from={full}", "--config.model.preset=tiny",
                        "--config.eval.samples_per_prompt=1", check=False))
  assert line.startswith(f"error: {full}/checkpoints/6: its params do not match this model"), line


def test_a_write_that_fails_stops_with_one_line_and_resumes(dpo_run, tmp_path):
  """A full disk, as the kernel reports a write past RLIMIT_FSIZE (EFBIG): one line, the last checkpoint
  intact, and a rerun with room to write ends where the uninterrupted run did."""
  full, out = dpo_run
  wd = str(tmp_path / "run")
  env = {**os.environ, "PYTHONPATH": ROOT}
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # (the cache would be the first big write)
  # `ulimit -f 100`: files stop at 100 KiB. The tokenizer, caches, metrics and checkpoint metadata (< 30 KiB)
  # fit; the first checkpoint's array files (0.3-1.4 MiB each for this model) do not.
  p = subprocess.run(["bash", "-c", 'ulimit -f 100 && exec "$@"', "bash", *cmd(wd, *RANDOM_INIT)], cwd=ROOT,
                     env=env, capture_output=True, text=True, timeout=600)
  line = error_line(p)
  # (which write hits the limit first varies: an array file, or a zarr metadata file; the OS error is named
  # when tensorstore reports one, as it does for the array files)
  assert line.startswith(f"error: {wd}/checkpoints: writing checkpoint ") and "before it are intact" in line, line
  assert not [d for d in os.listdir(os.path.join(wd, "checkpoints")) if d.isdigit()]
  p = run(wd, *RANDOM_INIT)
  assert final(p) == out
  assert_same_rows(rows(wd), rows(full))


def test_truncated_safetensors_through_the_cli(hf_folder, tmp_path):
  folder = str(tmp_path / "m")
  shutil.copytree(hf_folder, folder)
  st = os.path.join(folder, "model.safetensors")
  with open(st, "r+b") as f:
    f.truncate(os.path.getsize(st) - 100)
  line = error_line(run(str(tmp_path / "wd"), *RANDOM_INIT, f"--config.model.hf_path={folder}", check=False))
  assert line.startswith(f"error: {st}: tensor ") and "the file is truncated" in line, line


def test_cache_files_are_verified_and_a_damaged_one_is_recomputed(tmp_path, capfd):
  from jaxalign.inference import load_arrays, save_arrays
  path = str(tmp_path / "reference_logps-k.npz")
  arrays = {"out0": np.arange(1000, dtype=np.float32), "out1": np.ones((10, 3))}
  save_arrays(path, arrays)
  assert os.listdir(tmp_path) == ["reference_logps-k.npz"]  # no temporary file left
  back = load_arrays(path)
  assert set(back) == set(arrays) and all(np.array_equal(back[k], arrays[k]) for k in arrays)
  data = open(path, "rb").read()
  at = data.index(np.arange(1000, dtype=np.float32)[500:501].tobytes())  # a byte inside out0's values
  for name, damaged in [("flipped", data[:at] + bytes([data[at] ^ 4]) + data[at + 1:]),
                        ("truncated", data[:len(data) // 2]), ("empty", b"")]:
    with open(path, "wb") as f:
      f.write(damaged)
    assert load_arrays(path) is None, name
    assert f"warning: {path}: damaged cache" in capfd.readouterr().err, name
  np.savez(path, out0=np.zeros(3))  # a file without our checksum (e.g. from an older version): recomputed
  assert load_arrays(path) is None


def test_export_bad_input_is_one_line(dpo_run, tmp_path):
  full, _ = dpo_run
  env = {**os.environ, "PYTHONPATH": ROOT}

  def export(*args):
    return subprocess.run([sys.executable, "-m", "jaxalign.export", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  line = error_line(export(f"--workdir={tmp_path}", f"--out={tmp_path / 'o'}"))
  assert line == f"error: {tmp_path}/config.json: file not found (is --workdir a jaxalign run?)", line
  f = tmp_path / "file"
  f.write_text("x")
  line = error_line(export(f"--workdir={full}", f"--out={f}"))
  assert line == f"error: {f}: exists and is not a directory (--out must be a directory)", line
  line = error_line(export(f"--workdir={full}", f"--out={tmp_path / 'o'}", "--step=4"))
  assert line == f"error: {full}/checkpoints: no checkpoint for step 4", line
  damaged = str(tmp_path / "damaged")
  shutil.copytree(full, damaged)
  _damage(os.path.join(damaged, "checkpoints", "6"), every=True)
  p = export(f"--workdir={damaged}", f"--out={tmp_path / 'o'}")  # falls back to step 3, with a warning
  assert p.returncode == 0 and f"warning: {damaged}/checkpoints/6: cannot read its params" in p.stderr, p.stderr
  assert os.path.exists(tmp_path / "o" / "model.safetensors")
