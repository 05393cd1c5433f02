"""Two processes over jax.distributed (gloo on CPU, 4 devices each) == one process with 8 devices: the
shared check of `test_multihost*.py` (two files, so that pytest-xdist runs them on different workers)."""

import json
import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR")}
  return {**env, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu",
          "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("perf/")} for line in f]


ONLINE = ["--config.eval.samples_per_prompt=1", "--config.eval.max_new_tokens=8", "--config.data.completion_len=8"]


def _tolerance(key: str, value: float) -> float:
  """Cross-process reductions sum in another order: float32 noise, not a different computation (1e-4).

  KLs and log-ratios are small differences of summed log-probs of tens of nats, which carry the noise of
  the sums: they are held to 1e-4 nats (2e-6 of a 50-nat sum), not to 1e-4 of the difference. PPO's clip fractions
  count tokens on either side of a threshold: noise flips a token now and then (one of a minibatch's
  ~150 tokens moves them by 0.007), so they are held to 0.01. Losses are functions of those log-ratios (IPO's
  is (h - target)^2, so a 1e-4-nat change of h moves a loss of 0.035 by 4e-5): they are held to 1e-4 absolute
  below 1 (it failed at 1e-4 of 0.035 on an AMD EPYC once, by 3.8e-6).
  """
  if key.endswith("clipfrac"):
    return 0.01
  floor = 1.0 if any(t in key for t in ("kl", "log_ratio", "margin", "loss")) else 1e-3
  return 1e-4 * max(abs(value), floor)


def two_processes_equal_one(tmp_path, config):
  ARGS = ["-m", "jaxalign.main", *config, "--config.init_from="]
  single = str(tmp_path / "single")
  s = subprocess.run([sys.executable, *ARGS, f"--workdir={single}"], cwd=ROOT, env=_env(8),
                     capture_output=True, text=True, timeout=600)
  assert s.returncode == 0, s.stderr[-3000:]
  # The same reward models / discriminator on both sides: two trainings differ by float32 reduction order,
  # and Adam turns that into parameter differences of order lr where a gradient is near zero.
  if "ppo_transformed" in config[0]:
    ARGS.append(f"--config.ppo.reward_paths={single}/rm_sentiment,{single}/rm_politeness")
  if "tlcr" in config[0]:
    ARGS.append(f"--config.tlcr.discriminator_path={single}/discriminator")
  port = _free_port()
  multi = str(tmp_path / "multi")
  procs = [subprocess.Popen([sys.executable, *ARGS, f"--workdir={multi}", "--distributed",
                             f"--coordinator=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
                            cwd=ROOT, env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  # only process 0 reports (gloo itself prints connection lines to stdout from C++)
  assert '"eval/win_rate"' in outs[0][0] and "{" not in outs[1][0]
  a, b = _rows(multi), _rows(single)
  assert [r["step"] for r in a] == [r["step"] for r in b] and len(a) >= 6
  if "bco" in config[0]:
    assert sum("train/delta" in r for r in a) >= 6 and any("train/udm_weight" in r for r in a)
  if "ppo" in config[0] or "tlcr" in config[0]:
    assert sum("train/score" in r for r in a) == 6 and sum("eval/win_rate" in r for r in a) == 2
  if "tlcr" in config[0]:  # the discriminator's token rewards, computed in the update
    assert all("train/token_reward" in r for r in a if "train/score" in r)
  if "ppo_transformed" in config[0]:  # both reward models scored in the update, LSC-aggregated
    assert all("train/reward_1" in r for r in a if "train/score" in r)
  for ra, rb in zip(a, b):
    assert ra.keys() == rb.keys()
    for k, v in ra.items():
      assert abs(v - rb[k]) <= _tolerance(k, rb[k]), (ra["step"], k, v, rb[k])
