"""Two processes over jax.distributed (gloo on CPU, 4 devices each) == one process with 8 devices for the seeds'
RL methods (`multihost.two_processes_equal_one`): each process samples and judges its own prompts, and the one
compiled update (DR-PO's reset rows, BPO's behaviour reference, DisCO's groups, f-DPG's normaliser) runs on the
global mesh."""

import pytest

from multihost import ONLINE, two_processes_equal_one

RL = ["--config.eval.samples_per_prompt=1", "--config.eval.max_new_tokens=8", "--config.data.completion_len=8"]


@pytest.mark.parametrize("config", [
    ["--config=configs/dr_po.py:tiny", *RL, "--config.ppo.reset_prob=0.75"],
    # BPO with IPO's loss on hard labels: right after each refresh the policy IS the reference, and a random init's
    # pairs tie (P = ½), so a soft target gives a gradient of float32 reduction-order noise that Adam scales up to
    # lr-sized steps in different directions on the two sides; the hard label's target ±1/(2τ) never vanishes
    ["--config=configs/bpo.py:tiny", *ONLINE, "--config.online.behavior_update_every=2", "--config.online.loss=ipo",
     "--config.online.tau=0.05", "--config.online.target=hard"],
    ["--config=configs/disco.py:tiny", *RL],
    ["--config=configs/f_dpg.py:tiny", *RL],
], ids=["dr_po", "bpo", "disco", "f_dpg"])
def test_two_processes_equal_one(tmp_path, config):
  two_processes_equal_one(tmp_path, config)
