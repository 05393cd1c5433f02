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


def _eval_args(data, source, judge):
  return [*_hf_args(HF[0], data), f"--config.data.source={source}", "--config.eval.every=3",
          f"--config.eval.judge={judge}", "--config.eval.prompts=4", "--config.eval.samples_per_prompt=2",
          "--config.eval.max_new_tokens=6", "--config.data.eval_examples=32"]


HF = []  # (the module's Hugging Face folder, for _eval_args)


@pytest.fixture(scope="module")
def dpo_on_jsonl(hf_llama, big_jsonl, reward_judge, tmp_path_factory):
  """DPO for 3 steps on the JSONL pairs with held-out evaluation judged by the reward model."""
  HF[:] = [hf_llama]
  wd = str(tmp_path_factory.mktemp("dpo") / "run")
  out = final(run(wd, *_eval_args(big_jsonl, "jsonl", reward_judge)))
  return wd, out


@pytest.mark.parametrize("source", ["jsonl", "hh_rlhf"])
def test_held_out_evaluation_on_user_data_with_a_reward_model_judge(dpo_on_jsonl, big_jsonl, reward_judge,
                                                                    tmp_path, source):
  if source == "jsonl":
    wd, out = dpo_on_jsonl
    data = big_jsonl
  else:
    data = _hh_file(tmp_path / "hh.jsonl")
    wd = str(tmp_path / "run")
    out = final(run(wd, *_eval_args(data, source, reward_judge)))
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
  from jaxalign.data import sources
  from jaxalign.data_eval import split_heldout
  c = base_config()
  c.data.eval_examples = 32
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


def test_unpaired_split_is_by_prompt_and_reads_eval_path_in_the_same_format(big_jsonl):
  """Pairs split into rows: a held-out prompt takes both of its rows, `num_examples` cuts training only, and
  `data.eval_path` is read as unpaired rows too (it used to give no held-out rows at all)."""
  from jaxalign.config import base_config
  c = base_config()
  c.data.source, c.data.path, c.data.feedback, c.data.num_examples = "jsonl", big_jsonl, "pairs", 100
  train, held = pipeline.binary_split(c.data, 0)
  assert len(train) == 100 and 120 < len(held) <= 256 and len(held) % 2 == 0
  assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
  assert [r["label"] for r in held[:4]] == [True, False, True, False] and held[0]["prompt"] == held[1]["prompt"]
  c.data.eval_path, c.data.eval_examples = big_jsonl, 10
  train, held = pipeline.binary_split(c.data, 0)
  from jaxalign.data import sources
  everything = pipeline.pairs_to_binary(sources.load_preference("jsonl", big_jsonl))
  assert held == everything[:10] and train == everything[:100]


def _cli(module, *args, stdin=None):
  import subprocess
  import sys
  from cli import ROOT
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                        capture_output=True, text=True, timeout=600, input=stdin)


def test_sample_cli_from_a_run_and_from_a_folder(dpo_on_jsonl, hf_llama, tmp_path):
  wd, _ = dpo_on_jsonl
  prompts = tmp_path / "prompts.txt"
  prompts.write_text(hh("how is the menu ?") .replace("\n", "\\n") + "\nreview of the cafe :\n")
  out = tmp_path / "s.jsonl"
  p = _cli("jaxalign.sample", f"--run={wd}", f"--prompts={prompts}", "--n=3", "--max_new_tokens=5", f"--out={out}")
  assert p.returncode == 0, p.stderr[-3000:]
  got = [json.loads(line) for line in out.read_text().splitlines()]
  assert len(got) == 6 and [g["sample"] for g in got] == [0, 1, 2] * 2
  assert got[0]["prompt"] == hh("how is the menu ?") and all(isinstance(g["completion"], str) for g in got)
  again = _cli("jaxalign.sample", f"--run={wd}", f"--prompts={prompts}", "--n=3", "--max_new_tokens=5", "--out=-")
  assert [json.loads(line) for line in again.stdout.splitlines()] == got  # same seed, same samples
  # a Hugging Face folder, prompts as JSONL on stdin, nucleus sampling
  p = _cli("jaxalign.sample", f"--hf_path={hf_llama}", "--prompts=-", "--top_p=0.9", "--temperature=0.7",
           "--max_new_tokens=4", stdin=json.dumps({"prompt": hh("how is the pool ?")}) + "\n")
  assert p.returncode == 0, p.stderr[-3000:]
  assert len(p.stdout.splitlines()) == 1 and json.loads(p.stdout)["prompt"] == hh("how is the pool ?")


def test_sample_and_evaluate_bad_input_is_one_line(reward_judge, tmp_path):
  from cli import error_line
  line = error_line(_cli("jaxalign.sample", f"--run={tmp_path}", "--prompts=-", stdin="hi\n"))
  assert line == f"error: {tmp_path}: not a run directory (no config.json)", line
  line = error_line(_cli("jaxalign.sample", f"--run={reward_judge}", "--prompts=-", stdin="hi\n"))
  assert line.startswith(f"error: {reward_judge}: holds a reward_model run, not a policy"), line
  line = error_line(_cli("jaxalign.sample", f"--run={reward_judge}", f"--prompts={tmp_path / 'nope.txt'}"))
  assert line == f"error: {tmp_path / 'nope.txt'}: file not found", line
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"prompt": "a"}\n{"text": "b"}\n')
  line = error_line(_cli("jaxalign.sample", f"--run={reward_judge}", f"--prompts={bad}"))
  assert line == f'error: {bad}:2: missing field "prompt" (a non-empty string)', line
  line = error_line(_cli("jaxalign.sample", f"--hf_path={tmp_path}", "--prompts=-", "--top_p=1.5", stdin="x\n"))
  assert line == "error: --top_p: out of range", line
  line = error_line(_cli("jaxalign.evaluate", f"--run={tmp_path}"))
  assert line == f"error: {tmp_path}: not a run directory (no config.json)", line
  line = error_line(_cli("jaxalign.evaluate", f"--hf_path={tmp_path}"))
  assert line == f"error: {tmp_path}: not a Hugging Face model folder (no config.json)", line


def test_evaluate_cli_on_a_run_and_on_a_folder(dpo_on_jsonl, hf_llama, big_jsonl, reward_judge, tmp_path):
  wd, out = dpo_on_jsonl
  p = _cli("jaxalign.evaluate", f"--run={wd}", f"--judge={reward_judge}", "--prompts=4", "--samples_per_prompt=2",
           "--max_new_tokens=6", f"--samples={tmp_path / 's.jsonl'}")
  assert p.returncode == 0, p.stderr[-3000:]
  got = json.loads(p.stdout)
  for k in EVAL_KEYS + ["eval/win_rate"]:
    assert k in got and np.isfinite(got[k]), k
  # the run's own held-out split, its final params and its reference: the loss it logged at its last step
  assert got["eval/loss"] == pytest.approx(out["eval/loss"], rel=1e-4)
  assert got["eval/rewards/accuracies"] == pytest.approx(out["eval/rewards/accuracies"])
  assert len((tmp_path / "s.jsonl").read_text().splitlines()) == 8
  # a bare folder against the run (the other way round), on 40 pairs of a data file, no judge
  p = _cli("jaxalign.evaluate", f"--hf_path={hf_llama}", f"--against={wd}", f"--data={big_jsonl}",
           "--max_pairs=40", "--prompts=2", "--max_new_tokens=4")
  assert p.returncode == 0, p.stderr[-3000:]
  got = json.loads(p.stdout)
  assert got["eval/pairs"] == 40 and "eval/win_rate" not in got and np.isfinite(got["eval/kl"])
  assert got["against"] == wd and got["judge"] == "auto"


UNPAIRED_EVAL_KEYS = ["eval/loss", "eval/rewards/desirable", "eval/rewards/undesirable", "eval/rewards/margins",
                      "eval/rewards/accuracies", "eval/logps/desirable", "eval/logps/undesirable"]


@pytest.mark.parametrize("config", ["online_ipo", "bco", "kto"])
def test_online_and_unpaired_runs_on_user_data_sample_held_out_prompts(hf_llama, big_jsonl, reward_judge, tmp_path,
                                                                       config):
  """Online IPO annotated by the reward model, BCO and KTO on the pairs split in two: all sample the held-out
  prompts against the reference and report the judge's win rate and the KL; the unpaired runs also their
  held-out loss and implicit rewards."""
  wd = str(tmp_path / "run")
  args = [*_hf_args(hf_llama, big_jsonl), f"--config.eval.judge={reward_judge}", "--config.eval.prompts=3",
          "--config.eval.samples_per_prompt=2", "--config.eval.max_new_tokens=5", "--config.eval.every=3"]
  if config == "online_ipo":
    args += ["--config.online.annotator=reward_model", f"--config.online.annotator_path={reward_judge}"]
  else:
    args += ["--config.data.feedback=pairs", "--config.data.num_examples=400"]
  out = final(run(wd, *args, config=f"configs/{config}.py:tiny"))
  for k in ("eval/kl", "eval/win_rate", "eval/judge_score") + (() if config == "online_ipo" else
                                                                tuple(UNPAIRED_EVAL_KEYS)):
    assert k in out and np.isfinite(out[k]), (k, out)
  if config != "online_ipo":
    assert out["eval/rewards/margins"] == pytest.approx(out["eval/rewards/desirable"] - out["eval/rewards/undesirable"],
                                                        abs=1e-6)
    assert 0.0 <= out["eval/rewards/accuracies"] <= 1.0 and out["eval/logps/desirable"] < 0
    assert ("eval/delta" if config == "bco" else "eval/kl") in out
  with open(os.path.join(wd, "samples.jsonl")) as f:
    samples = [json.loads(line) for line in f]
  from jaxalign.config import base_config
  from jaxalign.data import pipeline as pl
  c = base_config()
  c.data.source, c.data.path = "jsonl", big_jsonl
  held = set(pl.heldout_prompts(c.data, 0))
  assert len(samples) == 6 and {s["prompt"] for s in samples} <= held
  assert not held & set(pl.prompt_pool(c.data, 0))  # online rollouts never see a held-out prompt


@pytest.mark.parametrize("name,opts", [("bco", {}), ("bco", {"delta_estimator": "class_balanced"}), ("kto", {})])
def test_unpaired_held_out_loss_takes_its_batch_statistics_from_the_held_out_rows(name, opts, x64):
  """The held-out BCO / KTO loss in float64 against a direct computation: δ (BCO) is the held-out rows' mean
  reward (class-balanced: the midpoint of the class means), z₀ (KTO) their mismatched rows' clamped mean
  log-ratio; with the policy equal to the reference BCO's loss is log 2 and KTO's ½ (λ = 1)."""
  from jaxalign.trainers.unpaired import heldout_loss
  sig = lambda z: 1 / (1 + np.exp(-z))
  if True:
    rng = np.random.default_rng(3)
    n, beta = 37, 0.3
    pol, ref, pkl, rkl = (rng.normal(-20, 3, n) for _ in range(4))
    pos = rng.random(n) < 0.4
    hp = {"beta": beta} if name == "bco" else {"beta": beta, "lambda_d": 1.3, "lambda_u": 0.7}
    f = heldout_loss(name, hp, opts)
    cols = ((pol,), (ref,)) if name == "bco" else ((pol, pkl), (ref, rkl))
    loss, m = f(*cols, pos.astype(np.int32))
    r = beta * (pol - ref)
    if name == "bco":
      thr = (r[pos].mean() + r[~pos].mean()) / 2 if opts else r.mean()
      want = np.where(pos, np.log1p(np.exp(-(r - thr))), np.log1p(np.exp(r - thr))).mean()
      assert float(m["delta"]) == pytest.approx(thr, rel=1e-12)
    else:
      z0 = max(0.0, float(np.mean(pkl - rkl)))
      want = np.where(pos, 1.3 * sig(-beta * (pol - ref - z0)), 0.7 * sig(-beta * (z0 - pol + ref))).mean()
      thr = beta * z0
    assert float(loss) == pytest.approx(want, rel=1e-10)
    assert float(m["rewards/accuracies"]) == pytest.approx(np.mean((r > thr) == pos), abs=1e-7)
    assert float(m["rewards/margins"]) == pytest.approx(r[pos].mean() - r[~pos].mean(), rel=1e-10)
    assert float(m["logps/undesirable"]) == pytest.approx(pol[~pos].mean(), rel=1e-12)
    same = ((pol,), (pol,)) if name == "bco" else ((pol, pkl), (pol, pkl))
    assert float(f(*same, pos.astype(np.int32))[0]) == pytest.approx(np.log(2) if name == "bco" else
                                                                      (1.3 * pos + 0.7 * ~pos).mean() / 2, rel=1e-12)


def test_sweep_runs_a_grid_over_seeds_resumably(tmp_path):
  import sys
  from cli import ROOT
  sys.path.insert(0, os.path.join(ROOT, "experiments"))
  import sweep
  assert sweep.cells({"loss.beta": ["0.1", "0.3"], "train.steps": ["2"]}) == [
      {"loss.beta": "0.1", "train.steps": "2"}, {"loss.beta": "0.3", "train.steps": "2"}]
  assert sweep.mean_sd([1.0, 2.0, 3.0]) == (2.0, 1.0)
  fixed = ["--config.init_from=", "--config.eval.samples_per_prompt=1", "--config.train.steps=2",
           "--config.train.checkpoint_every=2", "--config.eval.every=0"]
  res = sweep.run_grid(str(tmp_path), f"{ROOT}/configs/dpo.py:tiny", {"loss.beta": ["0.1"]}, 2, fixed)
  assert list(res) == ["beta=0.1"] and len(res["beta=0.1"]) == 2
  a, b = (r["eval/kl"] for r in res["beta=0.1"])
  assert a != b  # two seeds, two different runs
  metrics = os.path.join(tmp_path, "beta=0.1", "seed1", "metrics.jsonl")
  mtime = os.path.getmtime(metrics)
  again = sweep.run_grid(str(tmp_path), f"{ROOT}/configs/dpo.py:tiny", {"loss.beta": ["0.1"]}, 2, fixed)
  assert again == res and os.path.getmtime(metrics) == mtime  # finished runs are not retrained
  table, stats = sweep.summarise(res)
  m, sd = stats["beta=0.1"]["eval/kl"]
  assert m == pytest.approx((a + b) / 2) and sd == pytest.approx(abs(a - b) / 2 ** 0.5)
  assert f"{m:.3f} ± {sd:.3f}" in table


def test_evaluate_cli_reproduces_a_built_in_runs_last_evaluation(tmp_path):
  wd = str(tmp_path / "run")
  out = final(run(wd, "--config.init_from=", "--config.eval.samples_per_prompt=2"))
  p = _cli("jaxalign.evaluate", f"--run={wd}")
  assert p.returncode == 0, p.stderr[-3000:]
  got = json.loads(p.stdout)
  for k in ("eval/win_rate", "eval/kl", "eval/gt_reward", "eval/valid", "eval/reference_valid"):
    assert got[k] == pytest.approx(out[k], rel=1e-5, abs=1e-6), k  # same params, reference, keys, samples


@pytest.mark.parametrize("config", ["dr_po", "bpo", "disco", "f_dpg"])
def test_rl_seed_methods_train_on_user_data_with_a_reward_model(hf_llama, big_jsonl, reward_judge, tmp_path, config):
  """The seeds' RL methods on a local Hugging Face folder and a JSONL file larger than the run needs, the reward
  model scoring inside the compiled update: DR-PO resets to the chosen responses of the data's training prompts,
  BPO's pairs are annotated by the reward model, DisCO thresholds its score, f-DPG targets π₀·exp(r/β). Every run
  evaluates on held-out prompts judged by the same reward model."""
  wd = str(tmp_path / "run")
  args = [*_hf_args(hf_llama, big_jsonl, steps=3, batch=16 if config == "dr_po" else 8),
          f"--config.eval.judge={reward_judge}", "--config.eval.prompts=3", "--config.eval.samples_per_prompt=2", "--config.eval.max_new_tokens=5",
          "--config.eval.every=3"]
  if config == "bpo":
    args += ["--config.online.annotator=reward_model", f"--config.online.annotator_path={reward_judge}",
             "--config.online.behavior_update_every=2"]
  else:
    args += ["--config.ppo.reward_source=reward_models", f"--config.ppo.reward_paths={reward_judge}"]
  if config == "dr_po":
    args += ["--config.ppo.reset_prob=1.0"]
  if config == "disco":
    args += ["--config.disco.reward=threshold", "--config.disco.threshold=0.0", "--config.disco.group=4",
             "--config.disco.minibatches=2"]
  out = final(run(wd, *args, config=f"configs/{config}.py:tiny"))
  assert np.isfinite(out["eval/win_rate"]) and np.isfinite(out["eval/kl"]), out
  train = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl")) if '"train/loss"' in l]
  assert len(train) == 3
  if config == "dr_po":  # every rollout starts from a prefix of a chosen response of its prompt
    assert all(r["train/reset_frac"] == 1.0 and r["train/policy_tokens"] < r["train/length"] for r in train)
  if config == "disco":
    assert all(0.0 <= r["train/positive"] <= 1.0 for r in train)
  if config == "f_dpg":
    assert all(np.isfinite(r["train/log_z"]) for r in train)
