"""Faults in every trainer: a non-finite step stops the run with the last good checkpoint intact, and a
run SIGKILLed in the middle of a checkpoint write resumes from the one before on the same trajectory.

(SIGKILL at other moments: tests/test_end_to_end.py kills the SFT and DPO stages during a step, during
the reference-cache write and during an evaluation; test_unpaired, test_online, test_ppo and test_tlcr kill
their trainers at other points.)
"""

import os

import jax
import numpy as np
import pytest

from cli import assert_same_rows, cmd, error_line, final, killed_at, rows, run

RANDOM_INIT = ["--config.init_from=", "--config.eval.samples_per_prompt=1"]  # no SFT stage


@pytest.mark.parametrize("config", ["sft", "dpo", "bco", "reward_model", "ipo_md", "ppo", "tlcr_discriminator",
                                    "bpo", "disco", "f_dpg", "dr_po"])
def test_nonfinite_step_stops_with_the_last_good_checkpoint(tmp_path, config):
  wd = str(tmp_path / config)
  p = run(wd, *RANDOM_INIT, "--config.debug.nonfinite_at_step=5", "--config.train.steps=6",
          "--config.train.checkpoint_every=3", "--config.train.log_every=1", "--config.eval.every=0",
          config=f"configs/{config}.py:tiny", check=False)
  line = error_line(p)
  assert line == (f"error: non-finite loss or gradient at step 5; stopped; last good checkpoint: step 3 in "
                  f"{wd}/checkpoints"), line
  steps = sorted(int(d) for d in os.listdir(os.path.join(wd, "checkpoints")) if d.isdigit())
  assert steps == [3], steps
  assert max(r["step"] for r in rows(wd)) == 4  # nothing of the bad step was logged
  from jaxalign.checkpoint import Checkpointer
  ck = Checkpointer(os.path.join(wd, "checkpoints"))
  meta_state = ck._mngr.restore(3)  # restored as saved, without a target
  leaves = jax.tree.leaves(meta_state["state"]["params"])
  assert leaves and all(np.isfinite(np.asarray(x)).all() for x in leaves)
  ck.close()


REWARD = ["--config.train.steps=6", "--config.train.checkpoint_every=3", "--config.eval.every=3", *RANDOM_INIT]


def test_reward_model_killed_during_a_checkpoint_write_resumes(tmp_path):
  full = str(tmp_path / "full")
  out = final(run(full, *REWARD, config="configs/reward_model.py:tiny"))
  assert out["step"] == 6 and "eval/accuracy" in out
  wd = str(tmp_path / "killed")
  killed_at(cmd(wd, *REWARD, config="configs/reward_model.py:tiny"), "checkpoint@6", str(tmp_path / "log"))
  assert sorted(int(d) for d in os.listdir(os.path.join(wd, "checkpoints")) if d.isdigit()) == [3]
  assert any("tmp" in d for d in os.listdir(os.path.join(wd, "checkpoints")))  # the write it was killed in
  p = run(wd, *REWARD, config="configs/reward_model.py:tiny")
  assert "note: " in p.stderr and "taking over the lock" in p.stderr  # the killed run's lock
  assert final(p) == out
  assert_same_rows(rows(wd), rows(full), "reward_model")
