"""Two processes over jax.distributed (gloo on CPU, 4 devices each) == one process with 8 devices, for the
online methods, PPO and TLCR (`multihost.two_processes_equal_one`): each process samples and judges its own
prompts, and the update runs on the global mesh."""

import pytest

from multihost import ONLINE, two_processes_equal_one


@pytest.mark.parametrize("config", [
    ["--config=configs/ipo_md.py:tiny", *ONLINE],
    ["--config=configs/nash_md.py:tiny", *ONLINE],
    ["--config=configs/ppo.py:tiny", "--config.eval.samples_per_prompt=1"],
    # the discriminator (trained by the one-process run, then given to both) scores every token in the update
    ["--config=configs/tlcr.py:tiny", "--config.eval.samples_per_prompt=1", "--config.train.steps=6",
     "--config.eval.every=3", "--config.train.checkpoint_every=3"],
], ids=["ipo_md", "nash_md", "ppo", "tlcr"])
def test_two_processes_equal_one(tmp_path, config):
  two_processes_equal_one(tmp_path, config)
