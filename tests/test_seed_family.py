"""The rest of the seeds' offline family through the CLI and the data layer: listwise data (JSONL and built-in
lists) for LiPO, JPO's instruction–response pairs, LD-DPO's reference tails, one-line errors on bad lists."""

import json
import os

import jax
import numpy as np
import pytest

from cli import error_line, final, rows, run

from jaxalign.data import builtin, pipeline
from jaxalign.data.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
  d = tmp_path_factory.mktemp("tok")
  builtin.builtin_tokenizer(str(d))
  return str(d / "builtin_sp.model")


@pytest.fixture(scope="module")
def lists_jsonl(tmp_path_factory):
  """600 lists of 2–4 completions with real-valued scores (any scale), as a user would write them."""
  path = tmp_path_factory.mktemp("lists") / "lists.jsonl"
  rng = np.random.default_rng(0)
  with open(path, "w") as f:
    for r in builtin.preference_lists(600, k=4, seed=5):
      k = int(rng.integers(2, 5))
      f.write(json.dumps({"prompt": r["prompt"], "completions": r["completions"][:k],
                          "scores": [10 * s - 3 for s in r["scores"][:k]]}) + "\n")
  return str(path)


def _user(sp_model, path, steps=3):
  return ["--config.data.source=jsonl", f"--config.data.path={path}", f"--config.data.tokenizer={sp_model}",
          "--config.init_from=", f"--config.train.steps={steps}", "--config.train.batch_size=16",
          "--config.data.num_examples=0", "--config.eval.prompts=2", "--config.eval.max_new_tokens=6"]


def test_builtin_lists_are_graded_by_the_ground_truth_with_pair_noise():
  ls = builtin.preference_lists(400, k=4, seed=1)
  assert ls == builtin.preference_lists(400, k=4, seed=1)  # a function of (seed, index)
  assert all(len(r["completions"]) == 4 == len(set(r["completions"])) for r in ls)
  scores = np.array([r["scores"] for r in ls])
  assert np.allclose(scores.sum(1), 2.0) and set(np.unique(scores * 4).tolist()) <= {0.5, 1.5, 2.5, 3.5}
  # the best-scored completion is better by the ground truth far more often than not (labels are noisy draws)
  best = [builtin.reward(r["prompt"], r["completions"][int(np.argmax(r["scores"]))],
                         r["finished"][int(np.argmax(r["scores"]))]) for r in ls]
  worst = [builtin.reward(r["prompt"], r["completions"][int(np.argmin(r["scores"]))],
                          r["finished"][int(np.argmin(r["scores"]))]) for r in ls]
  assert 0.7 < np.mean(np.array(best) > np.array(worst)) < 1.0
  pairs = builtin.preference_lists(50, k=2, seed=1)
  assert all(sorted(r["scores"]) == [0.25, 0.75] for r in pairs)


def test_tokenize_lists_pads_short_lists(sp_model, lists_jsonl):
  from jaxalign.data import sources
  tok = Tokenizer(sp_model)
  got = sources.read_list_jsonl(lists_jsonl)
  arr = pipeline.tokenize_lists(tok, got, 16, 24)
  k = arr["list_mask"].sum(1)
  assert arr["completions"].shape == (600, 4, 24) and set(k.tolist()) == {2, 3, 4}
  assert np.array_equal(k, [len(r["completions"]) for r in got])
  assert np.all(arr["completions_mask"][~arr["list_mask"]] == 0)
  np.testing.assert_allclose(arr["scores"][0, :k[0]], got[0]["scores"], rtol=1e-6)


def test_lipo_trains_on_jsonl_lists_and_evaluates_held_out_lists(sp_model, lists_jsonl, tmp_path):
  wd = str(tmp_path / "lipo")
  out = final(run(wd, *_user(sp_model, lists_jsonl), config="configs/lipo.py:tiny"))
  assert out["step"] == 3
  for k in ("eval/loss", "eval/rewards/chosen", "eval/rewards/rejected", "eval/rewards/pair_accuracy",
            "eval/logps/chosen", "eval/kl"):
    assert k in out and np.isfinite(out[k]), (k, out)
  train = [r for r in rows(wd) if "train/loss" in r]
  assert len(train) == 3 and all(np.isfinite(r["train/loss"]) for r in train)
  with open(f"{wd}/samples.jsonl") as f:
    assert len([json.loads(line) for line in f]) == 4  # 2 held-out prompts x 2 samples
  # `jaxalign.evaluate --run` reads the run's lists again and reproduces its last held-out evaluation
  import subprocess
  import sys
  from cli import ROOT
  p = subprocess.run([sys.executable, "-m", "jaxalign.evaluate", f"--run={wd}"], cwd=ROOT,
                     env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-1500:]
  got = json.loads(p.stdout)
  for k in ("eval/loss", "eval/rewards/pair_accuracy", "eval/kl"):
    assert got[k] == pytest.approx(out[k], rel=1e-4, abs=1e-5), k


def test_listwise_bad_rows_are_one_line(sp_model, lists_jsonl, tmp_path):
  cases = [({"prompt": "p", "completions": ["a", "b", "c"], "scores": [1, 2]},
            'fields "completions" and "scores" differ in length (3 vs 2)'),
           ({"prompt": "p", "completions": ["a"], "scores": [1]}, "needs at least 2 completions"),
           ({"prompt": "p", "completions": ["a", ""], "scores": [1, 2]}, '"completions"[1] must be a non-empty'),
           ({"prompt": "p", "completions": ["a", "b"], "scores": [1, "x"]}, '"scores"[1] must be a finite number'),
           ({"prompt": "p", "completions": "a b", "scores": [1, 2]}, '"completions" must be a list')]
  with open(lists_jsonl) as f:
    good = f.read().splitlines()[:5]
  for i, (row, want) in enumerate(cases):
    bad = tmp_path / f"bad{i}.jsonl"
    bad.write_text("\n".join(good[:3] + [json.dumps(row)] + good[3:]) + "\n")
    p = run(str(tmp_path / f"wd{i}"), *_user(sp_model, str(bad)), config="configs/lipo.py:tiny", check=False)
    line = error_line(p)
    assert p.returncode == 2 and line.startswith(f"error: {bad}:4: ") and want in line, (line, p.stderr[-800:])


def test_jpo_with_one_shared_prompt_is_dpo(sp_model):
  """The joint layout scores the prompt tokens too, yet with both sides on one prompt log π(x) cancels: the
  DPO margin of `tokenize_joint` equals that of `tokenize_preference` (float32, random policy and reference)."""
  from jaxalign import losses
  from jaxalign.models.loading import init_params
  from jaxalign.models.transformer import model_config
  from jaxalign import sharding as shd
  from jaxalign.trainers.offline import pair_logps
  tok = Tokenizer(sp_model)
  pairs = builtin.preference_pairs(16, seed=2)
  joint = [{"chosen_prompt": r["prompt"], "rejected_prompt": r["prompt"], **r} for r in pairs]
  a = pipeline.tokenize_preference(tok, pairs, 16, 24)
  b = pipeline.tokenize_joint(tok, joint, 16, 24)
  assert b["prompt"].shape == (16, 1) and b["chosen"].shape == (16, 39)
  cfg = model_config("nano", vocab_size=tok.vocab_size)
  mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  pol, ref = init_params(cfg, jax.random.key(0), mesh), init_params(cfg, jax.random.key(1), mesh)
  lp = lambda p, x: pair_logps(cfg, p, {k: np.asarray(v) for k, v in x.items()}, 64)
  dpo = losses.dpo(*lp(pol, a), *lp(ref, a), beta=0.1)
  jpo = losses.LOSSES["jpo"](*lp(pol, b), *lp(ref, b), beta=0.1)
  np.testing.assert_allclose(np.asarray(jpo), np.asarray(dpo), rtol=1e-4, atol=1e-5)
  assert np.all(np.asarray(lp(pol, b)[0]) < np.asarray(lp(pol, a)[0]))  # the prompt's own log-prob is in J


def test_jpo_trains_on_jsonl_with_different_prompts(sp_model, tmp_path):
  path = tmp_path / "joint.jsonl"
  with open(path, "w") as f:
    for r in builtin.joint_pairs(400, seed=3, joint_fraction=0.5):
      if r["chosen_prompt"] == r["rejected_prompt"]:  # ordinary rows may be mixed in
        f.write(json.dumps({"prompt": r["chosen_prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}) + "\n")
      else:
        f.write(json.dumps({k: r[k] for k in ("chosen_prompt", "chosen", "rejected_prompt", "rejected")}) + "\n")
  out = final(run(str(tmp_path / "jpo"), *_user(sp_model, str(path)), config="configs/jpo.py:tiny"))
  for k in ("eval/loss", "eval/rewards/accuracies", "eval/kl"):
    assert k in out and np.isfinite(out[k]), (k, out)
  joint = builtin.joint_pairs(400, seed=3, joint_fraction=0.5)
  assert 0.4 < np.mean([r["chosen_prompt"] != r["rejected_prompt"] for r in joint]) < 0.6


def test_ld_dpo_reference_tails_cached_equal_the_step(tmp_path):
  """LD-DPO's reference tails precomputed (and cached) give the steps that computing them in the step gives."""
  common = ["--config.init_from=", "--config.train.steps=3", "--config.eval.every=100"]
  losses_of = {}
  for name, extra in (("pre", []), ("step", ["--config.train.precompute_ref=False"])):
    final(run(str(tmp_path / name), *common, *extra, config="configs/ld_dpo.py:tiny"))
    losses_of[name] = [r["train/loss"] for r in rows(str(tmp_path / name)) if "train/loss" in r]
  assert len(losses_of["pre"]) == 3 and np.allclose(losses_of["pre"], losses_of["step"], rtol=1e-5), losses_of
  assert any(f.startswith("reference_logps_tails-") for f in os.listdir(tmp_path / "pre" / "ref_cache"))
  p = run(str(tmp_path / "packed"), *common, "--config.train.packing=True", config="configs/ld_dpo.py:tiny",
          check=False)
  assert p.returncode == 2 and "train.packing" in error_line(p)


def test_d2o_trains_on_jsonl_negatives_with_cached_reference_samples(sp_model, tmp_path):
  """Human negatives only; the positives are the reference's own samples, drawn once per prompt and cached
  (a rerun with more steps reuses them), the negative last in each list."""
  path = tmp_path / "neg.jsonl"
  with open(path, "w") as f:
    for r in builtin.preference_pairs(300, seed=4):
      f.write(json.dumps({"prompt": r["prompt"], "rejected": r["rejected"]}) + "\n")
  wd = str(tmp_path / "d2o")
  out = final(run(wd, *_user(sp_model, str(path), steps=2), config="configs/d2o.py:tiny"))
  for k in ("eval/loss", "eval/rewards/samples", "eval/rewards/rejected", "eval/rewards/margins", "eval/kl"):
    assert k in out and np.isfinite(out[k]), (k, out)
  cache = [f for f in os.listdir(f"{wd}/ref_cache") if f.startswith("d2o_samples-k3-")]
  assert len(cache) == 2, cache  # training rows and held-out rows
  stamp = {f: os.path.getmtime(f"{wd}/ref_cache/{f}") for f in cache}
  with np.load(f"{wd}/ref_cache/{sorted(cache, key=lambda f: os.path.getsize(f'{wd}/ref_cache/{f}'))[-1]}") as z:
    toks, masks = z["out0"], z["out1"]
  assert toks.shape[1:] == (3, 24) and masks.shape == toks.shape and np.all(masks.sum(2) >= 1)
  final(run(wd, *_user(sp_model, str(path), steps=4), config="configs/d2o.py:tiny"))
  assert {f: os.path.getmtime(f"{wd}/ref_cache/{f}") for f in cache} == stamp  # not sampled again
  train = [r for r in rows(wd) if "train/loss" in r]
  assert [r["step"] for r in train] == [1, 2, 3, 4] and train[0]["train/loss"] == pytest.approx(np.log(2), rel=1e-5)


def test_sorted_margin_regions_flips_the_lowest_and_asks_about_the_next():
  from jaxalign.trainers.rlthf import sorted_margin_regions
  m = np.array([0.5, -3.0, 2.0, -1.0, 0.0, -2.0, 1.0])
  eligible = np.array([True, True, True, True, True, False, True])  # pair 5 has a human label already
  got = sorted_margin_regions(m, eligible, n_flip=1, n_human=2)
  assert got["flip"].tolist() == [1] and got["human"].tolist() == [3, 4]
  assert sorted_margin_regions(m, eligible, n_flip=0, n_human=10)["human"].tolist() == [1, 3, 4, 0, 6, 2]


def _rlthf_tiny(*extra):
  return ["--config.rlthf.rm_steps=4", "--config.rlthf.rm_batch_size=16", "--config.rlthf.rm_eval_pairs=16",
          "--config.sft.steps=20", *extra]


def test_rlthf_on_the_built_in_task_improves_the_labels_and_trains_dpo(tmp_path):
  """Humans (the ground truth) relabel the lowest-margin pairs: the labels' accuracy never falls over the rounds
  (no automatic flips) and beats the AI labels; DPO trains on the final labels and is evaluated as built-in runs."""
  from cli import ROOT
  import subprocess
  import sys
  wd = str(tmp_path / "rlthf")
  p = subprocess.run([sys.executable, "-m", "jaxalign.rlthf", "--config=configs/rlthf.py:tiny", f"--workdir={wd}",
                      *_rlthf_tiny("--config.rlthf.budget=0.3", "--config.rlthf.final_labels=curated")],
                     cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, p.stderr[-2000:]
  out = json.loads(p.stdout[p.stdout.index("{"):])
  assert 0 <= out["eval/win_rate"] <= 1 and np.isfinite(out["eval/kl"])
  r = rows(wd)
  acc = [x["rlthf/label_accuracy"] for x in r if "rlthf/label_accuracy" in x]
  end = r[-1]
  assert len(acc) == 2 and end["rlthf/ai_label_accuracy"] < acc[0] <= acc[1] == end["rlthf/final_label_accuracy"]
  assert [x["rlthf/human_share"] for x in r] == pytest.approx([0.15, 0.30, 0.30], abs=0.01)
  with open(f"{wd}/final_pairs.jsonl") as f:
    assert len(f.readlines()) == 256


def test_rlthf_on_user_pairs_waits_for_annotations_and_resumes(sp_model, tmp_path):
  data = tmp_path / "pairs.jsonl"
  with open(data, "w") as f:
    for r in builtin.preference_pairs(200, seed=6):
      f.write(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n")
  wd = str(tmp_path / "rlthf")
  args = [*_user(sp_model, str(data)), *_rlthf_tiny("--config.rlthf.budget=0.1", "--config.rlthf.downstream=False")]
  for t in range(2):
    p = run(wd, *args, config="configs/rlthf.py:tiny", check=False)
    ask = f"{wd}/round{t}/to_annotate.jsonl"
    assert p.returncode == 2 and error_line(p).startswith(f"error: {ask}: 10 pairs to annotate"), p.stderr[-800:]
    with open(ask) as f:
      todo = [json.loads(line) for line in f]
    assert len(todo) == 10 and {"id", "prompt", "a", "b"} <= set(todo[0])
    bad = f"{wd}/round{t}/annotated.jsonl"
    with open(bad, "w") as f:
      f.write(json.dumps({"id": todo[0]["id"], "preferred": "c"}) + "\n")
    p = run(wd, *args, config="configs/rlthf.py:tiny", check=False)
    assert error_line(p) == f'error: {bad}:1: field "preferred" must be "a" or "b", got \'c\''
    with open(bad, "w") as f:
      for x in todo:
        f.write(json.dumps({"id": x["id"], "preferred": "b"}) + "\n")  # every annotated pair flips
  run(wd, *args, config="configs/rlthf.py:tiny")
  r = rows(wd)
  assert [x["step"] for x in r] == [1, 2, 3] and r[1]["rlthf/human_share"] == pytest.approx(20 / 190, abs=0.02)
  with open(f"{wd}/final_pairs.jsonl") as f:
    final = [json.loads(line) for line in f]
  with open(f"{wd}/round0/to_annotate.jsonl") as f:
    first = json.loads(f.readline())
  assert any(x["prompt"] == first["prompt"] and x["chosen"] == first["b"] for x in final)  # the human's answer
