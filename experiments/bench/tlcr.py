"""The PPO update with TLCR token rewards against the same update with one sequence reward model.

  python experiments/bench/tlcr.py [--preset tiny] [--batch 64] [--prompt_len 16] [--completion_len 24] [--rounds 5]

Same shapes on both sides: a random-init policy, reference, reward model and discriminator of `--preset`,
one rollout batch of random tokens (left-padded prompts, right-padded completions of random lengths),
`ppo.epochs` × `ppo.minibatches` = 4 × 2 as configs/ppo.py. The update is built as the trainer builds it
(`ppo.make_update`, `jit_step`, frozen trees passed in); what differs is the reward: the reward model's
score at EOS (`reward_models`), or the discriminator's token rewards (`token_discriminator`), each
with the k1 KL on sampled tokens and with the exact KL over the vocabulary (`full`, TLCR's default).
Each variant compiles once, then the variants run alternately `--rounds` times × `--steps` updates
(this machine's speed drifts); medians per variant and the ratio to `reward_models/k1`. Prints a table
or one JSON line (`--json`).

`--label_pairs N` (default 2000; 0 skips it) also times `token_labels.edit_labels_batch` on N random pairs
of `--label_len` (256) tokens, each revision 10 random substitutions, deletions or insertions away: pairs/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import numpy as np

import jaxalign
from jaxalign import sharding as shd
from jaxalign.config import base_config
from jaxalign.data.token_labels import edit_labels_batch
from jaxalign.models import heads
from jaxalign.models.loading import init_params
from jaxalign.models.transformer import model_config
from jaxalign.trainers import ppo
from jaxalign.trainers.state import create_state, jit_step

VARIANTS = (("reward_models", "k1"), ("token_discriminator", "k1"), ("reward_models", "full"),
            ("token_discriminator", "full"))


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor()


def label_pairs_per_s(n: int, length: int) -> float:
  rng = np.random.default_rng(1)
  rej = [rng.integers(0, 32000, length).tolist() for _ in range(n)]
  rev = []
  for r in rej:
    m = list(r)
    for _ in range(10):
      k, op = int(rng.integers(len(m))), int(rng.integers(3))
      if op == 0:
        m[k] = int(rng.integers(32000))
      elif op == 1:
        del m[k]
      else:
        m.insert(k, int(rng.integers(32000)))
    rev.append(m)
  t = time.perf_counter()
  edit_labels_batch(rej, rev)
  return n / (time.perf_counter() - t)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--preset", default="tiny")
  ap.add_argument("--vocab", type=int, default=64)
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--prompt_len", type=int, default=16)
  ap.add_argument("--completion_len", type=int, default=24)
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--steps", type=int, default=2, help="timed updates per variant per round")
  ap.add_argument("--label_pairs", type=int, default=2000)
  ap.add_argument("--label_len", type=int, default=256)
  ap.add_argument("--json", action="store_true")
  a = ap.parse_args(argv)
  jaxalign.set_xla_cpu_flags()
  mesh = shd.make_mesh()
  cfg = model_config(a.preset, vocab_size=a.vocab)
  key = lambda i: jax.random.key(i)
  rng = np.random.default_rng(0)
  b, p, c = a.batch, a.prompt_len, a.completion_len
  pm = (np.arange(p)[None] >= p - rng.integers(4, p + 1, b)[:, None]).astype(np.int32)
  cm = (np.arange(c)[None] < rng.integers(4, c + 1, b)[:, None]).astype(np.int32)
  rows = dict(prompt=rng.integers(4, a.vocab, (b, p)).astype(np.int32) * pm, prompt_mask=pm,
              completion=rng.integers(4, a.vocab, (b, c)).astype(np.int32) * cm, completion_mask=cm,
              finished=rng.random(b) < 0.9)
  batch = shd.shard_batch(rows, mesh)
  trunk = lambda i: init_params(cfg, key(i), mesh)
  frozen = {"reference": trunk(1), "reward_models": ({"trunk": trunk(2), "head": heads.init_head(cfg, key(3), mesh)},),
            "discriminator": {"trunk": trunk(4), "head": heads.init_token_head(cfg, key(5), mesh)}}
  steps, results = {}, {}
  for source, est in VARIANTS:
    c_ = base_config()
    c_.ppo.reward_source, c_.ppo.kl_estimator, c_.ppo.epochs, c_.ppo.minibatches = source, est, 4, 2
    opt = ppo.optimizer_for(c_)
    state = create_state({"policy": trunk(0), "value": {"head": heads.init_head(cfg, key(6), mesh)}}, opt, mesh,
                         jax.device_put(ppo.initial_extra(c_), shd.replicated(mesh)))
    tok = source == "token_discriminator"
    fz = {k: v for k, v in frozen.items() if k != ("reward_models" if tok else "discriminator")}
    if tok:
      fz["reward_models"] = ()
    update = ppo.make_update(c_.ppo, cfg, cfg, opt, seed=0, chunk=2048,
                             reward_cfgs=() if tok else (cfg,), disc_cfg=cfg if tok else None, tlcr=c_.tlcr)
    fn = jit_step(update, state, jax.tree.map(lambda x: x.sharding, batch),
                  jax.tree.map(lambda x: x.sharding, fz), mesh)
    t = time.perf_counter()
    state, m = fn(state, batch, fz)
    jax.block_until_ready(m)
    name = f"{source}/{est}"
    steps[name] = [fn, state, fz]
    results[name] = {"compile_s": time.perf_counter() - t, "times": []}
  for _ in range(a.rounds):
    for name, s in steps.items():
      fn, state, fz = s
      for _ in range(a.steps):
        t = time.perf_counter()
        state, m = fn(state, batch, fz)
        jax.block_until_ready(m)
        results[name]["times"].append(time.perf_counter() - t)
      s[1] = state
  base = statistics.median(results["reward_models/k1"]["times"])
  out = {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "preset": a.preset, "batch": b,
         "prompt_len": p, "completion_len": c, "rounds": a.rounds, "steps": a.steps}
  if a.label_pairs:
    out["label_pairs_per_s"] = round(label_pairs_per_s(a.label_pairs, a.label_len), 1)
  for name, r in results.items():
    med = statistics.median(r["times"])
    out[name] = {"update_s": round(med, 4), "ratio": round(med / base, 3), "compile_s": round(r["compile_s"], 1)}
  if a.json:
    print(json.dumps(out))
    return out
  print(f"{out['cpu_model']}, {out['cpu_count']} CPUs; preset {a.preset}, batch {b}, P {p}, C {c}; "
        f"medians of {a.rounds}×{a.steps} updates")
  print(f"{'variant':32s} {'update s':>9s} {'÷ RM/k1':>8s} {'compile s':>10s}")
  for name in results:
    r = out[name]
    print(f"{name:32s} {r['update_s']:9.4f} {r['ratio']:8.3f} {r['compile_s']:10.1f}")
  if a.label_pairs:
    print(f"edit_labels_batch: {out['label_pairs_per_s']:.0f} pairs/s ({a.label_pairs} pairs of {a.label_len} tokens)")
  return out


if __name__ == "__main__":
  sys.exit(main() and 0)
