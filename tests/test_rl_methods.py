"""The seeds' RL methods from the command line (DR-PO, BPO, DisCO / DisCO-b, f-DPG): each config trains on the
built-in task through the shared loop with one compiled update, logs its method's keys, and a SIGKILLed run
resumes on the same trajectory (f-DPG's running log Z and BPO's behaviour model are checkpointed state);
BPO's behaviour model is the loss's reference and is refreshed on schedule; bad settings are one line."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cli import ROOT, assert_same_rows, cmd, error_line, killed_at, rows, run
from jaxalign.config import base_config
from jaxalign.trainers.online import behavior_refresh
from jaxalign.trainers.state import TrainState

FAST = ["--config.init_from=", "--config.eval.samples_per_prompt=1", "--config.eval.max_new_tokens=8",
        "--config.data.completion_len=8"]
CONFIGS = {
    "dr_po": ["--config.ppo.reset_prob=0.75"],
    "bpo": ["--config.online.behavior_update_every=2"],
    "disco": [],
    "disco_b": ["--config.disco.variant=disco_b", "--config.disco.score=Lratio", "--config.disco.tau=1"],
    "f_dpg": ["--config.f_dpg.beta=1.0"],
}
KEYS = {
    "dr_po": ("train/reset_frac", "train/reset_tokens", "train/policy_tokens", "train/score", "train/kl"),
    "bpo": ("train/loss", "train/margin", "train/log_ratio", "train/pref_prob"),
    "disco": ("train/objective", "train/penalty", "train/token_kl", "train/valid_groups", "train/positive"),
    "disco_b": ("train/objective", "train/penalty", "train/token_kl", "train/valid_groups"),
    "f_dpg": ("train/log_z", "train/batch_log_z", "train/ess", "train/weight_abs", "train/kl", "train/reward"),
}


def _config(name):
  return f"configs/{'disco' if name == 'disco_b' else name}.py:tiny"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_config_trains_logs_its_keys_and_resumes_after_a_kill(tmp_path, name):
  args = [*FAST, *CONFIGS[name], "--config.train.steps=6", "--config.train.checkpoint_every=2",
          "--config.eval.every=3"]
  full = str(tmp_path / "full")
  run(full, *args, config=_config(name))
  rs = rows(full)
  train = [r for r in rs if "train/loss" in r]
  assert [r["step"] for r in train] == list(range(1, 7))
  for key in KEYS[name] + ("train/grad_norm", "perf/rollout_time_s", "perf/update_time_s"):
    assert all(np.isfinite(r[key]) for r in train), key
  assert [r["perf/step_compiles"] for r in train] == [1] * 6  # one compiled update (or grads + update) per run
  ev = [r for r in rs if "eval/win_rate" in r]
  assert [r["step"] for r in ev] == [3, 6] and all("eval/kl" in r for r in ev)
  if name == "dr_po":  # resets happen, and the policy gradient skips the prefix tokens
    assert all(0 < r["train/reset_frac"] <= 1 for r in train)
    assert all(r["train/policy_tokens"] < r["train/length"] for r in train)
    # the policy of a PPO-style run (params {"policy", "value"}) exports, and is what the checkpoint holds
    p = subprocess.run([sys.executable, "-m", "jaxalign.export", f"--workdir={full}", f"--out={tmp_path / 'hf'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    from safetensors.numpy import load_file
    exported = load_file(str(tmp_path / "hf" / "model.safetensors"))
    import orbax.checkpoint as ocp
    saved = ocp.PyTreeCheckpointer().restore(os.path.join(full, "checkpoints", "6", "state"))["params"]
    emb = np.asarray(next(v for k, v in sorted(exported.items()) if "embed" in k))
    leaves = [np.asarray(x) for x in jax.tree.leaves(saved["policy"])]
    assert any(x.shape == emb.shape and np.allclose(x, emb) for x in leaves)
  if name.startswith("disco"):
    assert all(0 <= r["train/valid_groups"] <= 1 and r["train/penalty"] >= 0 for r in train)
  if name in ("disco", "f_dpg"):  # the evaluate CLI loads these runs' policies and reproduces their last evaluation
    p = subprocess.run([sys.executable, "-m", "jaxalign.evaluate", f"--run={full}"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads(p.stdout[p.stdout.index("{"):])
    assert got["eval/win_rate"] == ev[-1]["eval/win_rate"] and abs(got["eval/kl"] - ev[-1]["eval/kl"]) < 1e-4
  if name == "f_dpg":  # a running mean over the batches so far: it moves less and less
    assert all(0 < r["train/ess"] <= 1 for r in train)
  if name == "disco_b":  # DisCO-b is DisCO's update program with another objective: its resume is DisCO's
    return
  wd = str(tmp_path / "killed")
  killed_at(cmd(wd, *args, config=_config(name)), "step@5", str(tmp_path / "log"))  # step 5 in flight
  assert max(r["step"] for r in rows(wd)) < 5
  run(wd, *args, config=_config(name))
  assert_same_rows(rows(wd), rs, name)


def test_bpo_reference_is_the_behaviour_model_refreshed_on_schedule(tmp_path):
  """With the refresh every step the behaviour model IS the policy that the step starts from: the mean log-ratio
  against the reference is exactly 0 at every step; every 3 steps it is 0 only right after a refresh."""
  logs = {}
  for every in (1, 3):
    wd = str(tmp_path / f"every{every}")
    run(wd, *FAST, f"--config.online.behavior_update_every={every}", "--config.train.steps=6",
        "--config.train.warmup_steps=0",  # (a warm-up from 0 would leave the first step without a change)
        "--config.eval.every=0", config="configs/bpo.py:tiny")
    logs[every] = [r["train/log_ratio"] for r in rows(wd) if "train/log_ratio" in r]
  assert len(logs[1]) == 6 and all(abs(x) < 1e-5 for x in logs[1])
  zero = [abs(x) < 1e-5 for x in logs[3]]
  assert zero[0] and zero[3] and not any(zero[i] for i in (1, 2, 4, 5)), logs[3]


def test_behavior_refresh_copies_or_averages_on_schedule():
  c = base_config()
  with c.unlocked():
    c.online.behavior_update_every, c.online.behavior_ema = 2, 0.0
  params, old = {"w": jnp.full((3,), 4.0)}, {"w": jnp.zeros((3,))}
  st = lambda step: TrainState(step=jnp.int32(step), params=params, opt_state=(), extra={"behavior": old})
  assert behavior_refresh(c)(st(3)).extra["behavior"]["w"].tolist() == [0.0] * 3
  assert behavior_refresh(c)(st(4)).extra["behavior"]["w"].tolist() == [4.0] * 3
  with c.unlocked():
    c.online.behavior_ema = 0.75
  assert behavior_refresh(c)(st(4)).extra["behavior"]["w"].tolist() == [1.0] * 3


@pytest.mark.parametrize("config,flag,key", [
    ("disco", "--config.disco.group=1", "disco.group"),
    ("disco", "--config.disco.minibatches=3", "disco.minibatches"),
    ("f_dpg", "--config.ppo.temperature=0.7", "ppo.temperature"),
    ("f_dpg", "--config.f_dpg.divergence=kl", "f_dpg.divergence"),
    ("bpo", "--config.online.mixture_coef=0.5", "online.reference"),
    ("dr_po", "--config.ppo.reset_prob=1.5", "ppo.reset_prob"),
])
def test_bad_settings_are_one_line_errors(tmp_path, config, flag, key):
  p = run(str(tmp_path / "wd"), *FAST, flag, config=f"configs/{config}.py:tiny", check=False)
  assert p.returncode == 2 and error_line(p).startswith(f"error: config {key}"), p.stderr[-2000:]
