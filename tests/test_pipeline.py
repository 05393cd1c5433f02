"""Tokenised layout and truncation, data order = f(seed, step), ref-log-prob cache, real-format sources."""

import os
from pathlib import Path

import numpy as np
import pytest

from jaxalign.config import base_config
from jaxalign.data import builtin, pipeline
from jaxalign.metrics import read_jsonl

HH = Path(__file__).resolve().parents[2] / "shared/data/hh-rlhf/harmless-base-test.jsonl.gz"
SP = Path(__file__).resolve().parents[2] / "shared/data/sentencepiece/test_model.model"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return builtin.builtin_tokenizer(str(tmp_path_factory.mktemp("tok")))


def test_layout_and_truncation(tok):
  ex = [dict(prompt="review of the phone in paris :", chosen="the screen is good .",
             rejected="the screen is poor . thanks for reading .", rejected_finished=False)]
  a = pipeline.tokenize_preference(tok, ex, prompt_len=4, completion_len=6)
  p_ids = [tok.bos_id] + tok.encode(ex[0]["prompt"])
  assert a["prompt"][0].tolist() == p_ids[-4:] and a["prompt_mask"][0].tolist() == [1, 1, 1, 1]  # left-truncated
  c_ids = tok.encode(ex[0]["chosen"]) + [tok.eos_id]
  assert a["chosen"][0, :len(c_ids)].tolist() == c_ids and a["chosen_mask"][0].sum() == len(c_ids)
  r_ids = tok.encode(ex[0]["rejected"])  # unfinished: no EOS; right-truncated to 6
  assert a["rejected"][0].tolist() == r_ids[:6] and tok.eos_id not in a["rejected"][0].tolist()
  b = pipeline.tokenize_preference(tok, ex, prompt_len=16, completion_len=6, completion_truncation="left")
  assert b["prompt_mask"][0].tolist() == [0] * (16 - len(p_ids)) + [1] * len(p_ids)  # left-padded
  assert b["rejected"][0].tolist() == r_ids[-6:]


def test_batch_order_is_a_function_of_seed_and_step():
  n, bs = 10, 4
  seen = np.concatenate([pipeline.batch_indices(3, s, bs, n) for s in range(5)])  # 2 epochs
  assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:20].tolist()) == list(range(10))
  assert (pipeline.batch_indices(3, 2, bs, n) == seen[8:12]).all()  # any step, computed cold
  assert not (pipeline.batch_indices(4, 0, bs, n) == seen[:4]).all()


def _tiny_cfg(**kw):
  c = base_config()
  c.init_from = ""
  c.train.steps, c.train.batch_size, c.train.log_every, c.train.checkpoint_every = 3, 8, 1, 3
  c.eval.every, c.eval.samples_per_prompt = 0, 1
  c.data.num_examples = 64
  for k, v in kw.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c


def test_reference_cache_is_reused(tmp_path):
  from jaxalign.trainers import offline
  wd = str(tmp_path / "wd")
  offline.train(_tiny_cfg(), wd)
  cache = os.listdir(os.path.join(wd, "ref_cache"))
  assert len(cache) == 1
  path = os.path.join(wd, "ref_cache", cache[0])
  mtime = os.path.getmtime(path)
  wd2 = str(tmp_path / "wd2")
  os.makedirs(os.path.join(wd2, "ref_cache"))
  os.link(path, os.path.join(wd2, "ref_cache", cache[0]))
  offline.train(_tiny_cfg(), wd2)  # same data and reference params -> same key, file untouched
  assert os.listdir(os.path.join(wd2, "ref_cache")) == cache and os.path.getmtime(path) == mtime
  a, b = read_jsonl(os.path.join(wd, "metrics.jsonl")), read_jsonl(os.path.join(wd2, "metrics.jsonl"))
  assert [r.get("train/loss") for r in a] == [r.get("train/loss") for r in b]
  with np.load(path) as z:  # chosen log-probs of the 3 x 8 pairs the run reads; the others never computed
    done = z["__rows__"].astype(bool)
    assert z["out0"].shape == (64,) and np.all(z["out0"][done] < 0) and np.isnan(z["out0"][~done]).all()
  from jaxalign.data.pipeline import rows_visited
  assert np.array_equal(np.flatnonzero(done), rows_visited(0, 3, 8, 64)) and done.sum() == 24


def test_tfds_source_trains(tmp_path, tok):
  from jaxalign.data import sources
  from jaxalign.trainers import offline
  rows = builtin.preference_pairs(64, seed=1)
  sources.write_tfds_preference([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows],
                                str(tmp_path / "tfds"))
  wd = str(tmp_path / "wd")
  offline.train(_tiny_cfg(**{"data.source": "tfds", "data.path": str(tmp_path / "tfds"),
                             "data.tokenizer": tok.path}), wd)
  assert read_jsonl(os.path.join(wd, "metrics.jsonl"))[-1]["step"] == 3


@pytest.mark.skipif(not (HH.exists() and SP.exists()), reason="../shared HH-RLHF data or sentencepiece model absent")
def test_hh_rlhf_trains_and_loss_decreases(tmp_path):
  from jaxalign.trainers import offline
  wd = str(tmp_path / "wd")
  cfg = _tiny_cfg(**{"data.source": "hh_rlhf", "data.path": str(HH), "data.tokenizer": str(SP),
                     # 32 pairs seen for 12 epochs: a random-init model can only fit, not generalise
                     "data.prompt_len": 96, "data.completion_len": 48, "data.num_examples": 32,
                     "train.steps": 24, "train.batch_size": 16, "train.learning_rate": 3e-3,
                     "train.checkpoint_every": 24, "train.precompute_ref": False})
  offline.train(cfg, wd)
  rows = [r for r in read_jsonl(os.path.join(wd, "metrics.jsonl")) if "train/loss" in r]
  losses = [r["train/loss"] for r in rows]
  assert len(losses) == 24 and np.isfinite(losses).all()
  assert abs(losses[0] - np.log(2)) < 1e-3
  assert np.mean(losses[-6:]) < np.mean(losses[:6]) - 0.1, losses
  # long transcripts were truncated from the left, not dropped
  from jaxalign.data import sources
  from jaxalign.data.tokenizer import Tokenizer
  sp = Tokenizer(str(SP))
  assert max(len(sp.encode(r["prompt"])) for r in sources.read_hh_rlhf(str(HH))[:32]) > 96


def test_binary_rows_layout_and_sources(tmp_path, tok):
  pairs = [dict(prompt="review of the phone in paris :", chosen="the screen is good .",
                rejected="the screen is poor .", rejected_finished=False),
           dict(prompt="review of the hotel in rome :", chosen="the bed is clean .", rejected="the bed .")]
  rows = pipeline.pairs_to_binary(pairs)
  assert [r["label"] for r in rows] == [True, False, True, False]
  a = pipeline.tokenize_binary(tok, rows, prompt_len=12, completion_len=8)
  assert a["label"].tolist() == [1, 0, 1, 0]
  assert tok.eos_id not in a["completion"][1].tolist()  # unfinished rejected side: no EOS
  assert a["completion"][0, :a["completion_mask"][0].sum()].tolist() == tok.encode("the screen is good .") + [
      tok.eos_id]
  # KTO's mismatched completion: row i carries row i-1's completion (cycled), never its own
  np.testing.assert_array_equal(a["kl_completion"], np.roll(a["completion"], 1, axis=0))
  assert all((a["kl_completion"][i] != a["completion"][i]).any() for i in range(4))
  # sources: binary JSONL as is, preference JSONL split into rows
  import json
  (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"prompt": r["prompt"], "completion": r["completion"],
                                                            "label": r["label"]}) for r in rows) + "\n")
  (tmp_path / "p.jsonl").write_text("\n".join(json.dumps({k: p[k] for k in ("prompt", "chosen", "rejected")})
                                               for p in pairs) + "\n")
  d = _tiny_cfg(**{"data.source": "jsonl", "data.path": str(tmp_path / "b.jsonl")}).data
  assert [r["label"] for r in pipeline.binary_examples(d, 0)] == [True, False, True, False]
  d.path, d.feedback = str(tmp_path / "p.jsonl"), "pairs"
  assert [(r["completion"], r["label"]) for r in pipeline.binary_examples(d, 0)] == [
      (r["completion"], r["label"]) for r in rows]
  d = _tiny_cfg(**{"data.feedback": "pairs", "data.num_examples": 10}).data
  built = pipeline.binary_examples(d, 0)
  assert len(built) == 10 and [r["label"] for r in built] == [True, False] * 5
  assert all(built[i]["prompt"] == built[i + 1]["prompt"] for i in range(0, 10, 2))


def test_binary_jsonl_with_a_bad_label_names_the_line(tmp_path):
  from jaxalign.errors import UserError
  from jaxalign.data import sources
  path = tmp_path / "b.jsonl"
  path.write_text('{"prompt": "a", "completion": "b", "label": true}\n{"prompt": "a", "completion": "b", "label": "yes"}\n')
  with pytest.raises(UserError, match=f"{path}:2.*label"):
    sources.read_binary_jsonl(str(path))


@pytest.mark.skipif(not (HH.exists() and SP.exists()), reason="../shared HH-RLHF data or sentencepiece model absent")
def test_hh_rlhf_as_unpaired_feedback_trains_bco(tmp_path):
  from jaxalign.trainers import unpaired
  wd = str(tmp_path / "wd")
  cfg = _tiny_cfg(**{"trainer": "unpaired", "loss.name": "bco", "data.source": "hh_rlhf", "data.path": str(HH),
                     "data.tokenizer": str(SP), "data.prompt_len": 96, "data.completion_len": 48,
                     "data.num_examples": 64, "train.steps": 24, "train.batch_size": 16,
                     "train.learning_rate": 3e-3, "train.checkpoint_every": 24})
  unpaired.train(cfg, wd)
  rows = [r for r in read_jsonl(os.path.join(wd, "metrics.jsonl")) if "train/loss" in r]
  assert abs(rows[0]["train/loss"] - np.log(2)) < 1e-3  # policy == reference, δ = 0: log 2
  assert rows[0]["train/desirable_fraction"] > 0 and rows[0]["train/delta"] == 0.0
  assert np.mean([r["train/loss"] for r in rows[-6:]]) < np.mean([r["train/loss"] for r in rows[:6]]) - 0.05
