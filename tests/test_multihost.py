"""Two processes over jax.distributed (gloo on CPU, 4 devices each) == one process with 8 devices, for the
offline trainers and PPO with reward models (`multihost.two_processes_equal_one`).

BCO with UDM checks that the reward shift δ is a global statistic (reduced across hosts) and that the
UDM embeddings and classifier are the same on every host.
"""

import pytest

from multihost import two_processes_equal_one


@pytest.mark.parametrize("config", [
    ["--config=configs/dpo.py:tiny"],
    ["--config=configs/bco.py:tiny", "--config.udm.enabled=True", "--config.udm.prompt_sample_size=64"],
    # two reward models (trained by the one-process run, then given to both), LSC's r_ref from reference
    # samples on each side, both models scored inside the update
    ["--config=configs/ppo_transformed.py:tiny", "--config.eval.samples_per_prompt=1",
     "--config.train.steps=6", "--config.train.log_every=1", "--config.eval.every=3"],
], ids=["dpo", "bco_udm", "ppo_transformed"])
def test_two_processes_equal_one(tmp_path, config):
  two_processes_equal_one(tmp_path, config)
