"""Research on real models and real data: the reference pass covers what a run consumes, evaluation on any
data source, the `sample` and `evaluate` CLIs."""

import json
import os

import numpy as np
import pytest

from cli import final, rows, run

pytest.importorskip("torch", reason="needs torch (pip install -e .[hf])")
from test_hf import build_model, hh, make_tokenizer, save  # noqa: E402

from jaxalign.data import pipeline  # noqa: E402


@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory):
  """A random tiny Llama Hugging Face folder with a BPE tokenizer and a chat template."""
  folder = str(tmp_path_factory.mktemp("llama"))
  make_tokenizer(folder)
  save(build_model("llama", vocab_size=211, num_key_value_heads=2), folder)
  return folder


ADJ = ["good", "great", "fine", "bad", "poor", "awful"]
THINGS = ["menu", "coffee", "room", "screen", "plot", "music", "food", "pool", "staff", "view"]


@pytest.fixture(scope="module")
def big_jsonl(tmp_path_factory):
  """2,000 HH-style preference pairs: far more than a 3-step run needs."""
  rng = np.random.default_rng(0)
  path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
  with open(path, "w") as f:
    for i in range(2000):
      thing = THINGS[i % len(THINGS)]
      a, b = rng.choice(3), 3 + rng.choice(3)
      f.write(json.dumps(dict(prompt=hh(f"how is the {thing} number {i} ?"), chosen=f" the {thing} is {ADJ[a]} .",
                              rejected=f" the {thing} is {ADJ[b]} .")) + "\n")
  return str(path)


def _hf_args(folder, data, steps=3, batch=8):
  return [f"--config.model.hf_path={folder}", "--config.init_from=", "--config.data.source=jsonl",
          f"--config.data.path={data}", "--config.data.prompt_len=24", "--config.data.completion_len=8",
          "--config.data.num_examples=0", f"--config.train.steps={steps}", f"--config.train.batch_size={batch}",
          "--config.train.checkpoint_every=3"]


def test_reference_pass_covers_only_the_rows_the_run_consumes(hf_llama, big_jsonl, tmp_path):
  wd = str(tmp_path / "run")
  out = final(run(wd, *_hf_args(hf_llama, big_jsonl)))
  assert out["step"] == 3
  cache = [f for f in os.listdir(os.path.join(wd, "ref_cache")) if f.startswith("reference_logps-")]
  assert len(cache) == 1, cache
  with np.load(os.path.join(wd, "ref_cache", cache[0])) as z:
    done = z["__rows__"].astype(bool)
  n = len(done)
  consumed = np.unique(np.concatenate([pipeline.batch_indices(0, s, 8, n) for s in range(3)]))
  assert n >= 1900 and done.sum() == len(consumed) == 24  # not one row more than the 3 steps read
  assert np.array_equal(np.flatnonzero(done), consumed)
  # a longer rerun on the same workdir computes only the rows it lacks, and keeps the ones it has
  out = final(run(wd, *_hf_args(hf_llama, big_jsonl, steps=6)))
  with np.load(os.path.join(wd, "ref_cache", cache[0])) as z:
    done6, lp6 = z["__rows__"].astype(bool), z["out0"]
  assert done6.sum() == 48 and done6[done].all()
  assert np.isfinite(lp6[done6]).all() and np.isnan(lp6[~done6]).all()
  assert [r["step"] for r in rows(wd) if "train/loss" in r][-1] == 6


def _hh_file(path, n=240):
  """Anthropic HH-RLHF format: full transcripts that share the prompt through the last "Assistant:"."""
  rng = np.random.default_rng(1)
  with open(path, "w") as f:
    for i in range(n):
      thing = THINGS[i % len(THINGS)]
      p = hh(f"how is the {thing} {i % 37} ?")
      a, b = rng.choice(3), 3 + rng.choice(3)
      f.write(json.dumps(dict(chosen=f"{p} the {thing} is {ADJ[a]} .", rejected=f"{p} the {thing} is {ADJ[b]} .")) + "\n")
  return str(path)


@pytest.fixture(scope="module")
def reward_judge(hf_llama, big_jsonl, tmp_path_factory):
  """A reward model on the Llama folder's trunk, trained a few steps on the JSONL pairs (a judge)."""
  wd = str(tmp_path_factory.mktemp("rm") / "run")
  run(wd, *_hf_args(hf_llama, big_jsonl, steps=6, batch=16), "--config.reward.eval_pairs=64",
      "--config.reward.margin=False",
      config="configs/reward_model.py:tiny")
  return wd


EVAL_KEYS = ["eval/loss", "eval/rewards/chosen", "eval/rewards/rejected", "eval/rewards/accuracies",
             "eval/rewards/margins", "eval/logps/chosen", "eval/logps/rejected", "eval/kl"]


@pytest.mark.parametrize("source", ["jsonl", "hh_rlhf"])
def test_held_out_evaluation_on_user_data_with_a_reward_model_judge(hf_llama, big_jsonl, reward_judge, tmp_path,
                                                                    source):
  data = big_jsonl if source == "jsonl" else _hh_file(tmp_path / "hh.jsonl")
  wd = str(tmp_path / "run")
  args = [*_hf_args(hf_llama, data), f"--config.data.source={source}", "--config.eval.every=3",
          f"--config.eval.judge={reward_judge}", "--config.eval.prompts=4", "--config.eval.samples_per_prompt=2",
          "--config.eval.max_new_tokens=6", "--config.data.eval_examples=32"]
  out = final(run(wd, *args))
  for k in EVAL_KEYS + ["eval/win_rate", "eval/judge_score", "eval/reference_judge_score"]:
    assert k in out and np.isfinite(out[k]), (k, out)
  assert 0.0 <= out["eval/win_rate"] <= 1.0 and 0.0 <= out["eval/rewards/accuracies"] <= 1.0
  ev = [r for r in rows(wd) if "eval/loss" in r]
  assert [r["step"] for r in ev] == [3]
  with open(os.path.join(wd, "samples.jsonl")) as f:
    samples = [json.loads(line) for line in f]
  assert len(samples) == 8 and all(s["judge"] == reward_judge for s in samples)
  assert all(isinstance(s["policy"], str) and isinstance(s["reference"], str) for s in samples)
  assert all("policy_score" in s and "reference_score" in s for s in samples)
  # the held-out prompts never reach training: the split is by prompt
  from jaxalign.config import base_config
  from jaxalign.data_eval import split_heldout
  c = base_config()
  c.data.eval_examples = 32
  from jaxalign.data import sources
  train, held = split_heldout(sources.load_preference(source, data), c.data)
  assert 0 < len(held) <= 32 and not {r["prompt"] for r in held} & {r["prompt"] for r in train}


def test_split_is_deterministic_and_eval_path_replaces_it(big_jsonl, tmp_path):
  from jaxalign.config import base_config
  from jaxalign.data import sources
  from jaxalign.data_eval import split_heldout
  c = base_config()
  rows_ = sources.load_preference("jsonl", big_jsonl)
  a = split_heldout(rows_, c.data)
  b = split_heldout(list(reversed(rows_)), c.data)
  assert sorted(r["prompt"] for r in a[1]) == sorted(r["prompt"] for r in b[1])  # independent of order
  assert 60 < len(a[1]) < 140 and len(a[0]) + len(a[1]) == len(rows_)  # ~5% of 2000
  c.data.eval_path = big_jsonl
  train, held = split_heldout(rows_, c.data, lambda: rows_[:10])
  assert train == rows_ and held == rows_[:10]
