"""The quality cost of a quantised KV cache on a trained policy: per-token KL and the change of the argmax.

  python experiments/bench/kv_cache.py --run=runs/frontier/dpo/beta=0.1/seed0 --json

Loads a run's policy (any trainer whose checkpoint holds a policy), samples the built-in task's held-out prompts
with a float32 cache, then feeds those same prefixes through the sampler's cache once per `--dtypes` entry
(prefill, then one token at a time, as the sampler does) and reports, per dtype, the mean and max over generated
positions of KL(float32 ‖ quantised) between the next-token distributions, how often the most likely token
changes, and the cache's bytes. Win rates with each cache: `python -m jaxalign.evaluate --run=RUN
--kv_cache_dtype=int8` (both models sampled with that cache).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from _common import print_result  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def next_token_logprobs(params, cfg, prompt, pmask, tokens):
  """`[B, T, V]`: the prompt prefilled, then `tokens` fed one at a time through a cache of `cfg.kv_cache_dtype`."""
  from jaxalign.models.transformer import Transformer, init_cache, output_matrix_DxV, positions_from_mask
  model, w = Transformer(cfg), output_matrix_DxV(cfg, params)
  b, p = prompt.shape

  @jax.jit
  def run(params, prompt, pmask, tokens):
    cache = init_cache(cfg, b, p + tokens.shape[1])
    pos = positions_from_mask(pmask)
    h, cache = model.apply({"params": params}, prompt, pos, pmask, cache, prefill=True)
    first = h[:, -1] @ w.astype(h.dtype)

    def step(carry, t_B):
      cache, pos_B = carry
      h, cache = model.apply({"params": params}, t_B[:, None], pos_B[:, None], jnp.ones_like(t_B)[:, None], cache)
      return (cache, pos_B + 1), h[:, -1] @ w.astype(h.dtype)

    _, rest = jax.lax.scan(step, (cache, pos[:, -1] + 1), tokens[:, :-1].T)
    logits = jnp.concatenate([first[:, None], jnp.moveaxis(rest, 0, 1)], 1)
    return jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  return run(params, prompt, pmask, tokens)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--run", required=True)
  ap.add_argument("--dtypes", default="bfloat16,int8")
  ap.add_argument("--prompts", type=int, default=64)
  ap.add_argument("--new_tokens", type=int, default=24)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--json", action="store_true")
  a = ap.parse_args(argv)
  from jaxalign import sampling
  from jaxalign import sharding as shd
  from jaxalign.data import builtin, pipeline
  from jaxalign.models.transformer import init_cache
  from jaxalign.runs import load_policy
  mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  pol = load_policy(a.run, mesh=mesh)
  cfg = dataclasses.replace(pol.cfg, kv_cache_dtype="float32")
  prompts = (list(builtin.EVAL_PROMPTS) * (a.prompts // len(builtin.EVAL_PROMPTS) + 1))[:a.prompts]
  ids, pm = pipeline.encode_prompts(pol.tok, prompts, int(pol.config.data.prompt_len))
  ids, pm = jnp.asarray(ids), jnp.asarray(pm)
  toks, mask, _ = sampling.sample(pol.params, ids, pm, jax.random.key(a.seed), cfg=cfg, max_new_tokens=a.new_tokens,
                                  eos_id=pol.tok.eos_id, pad_id=pol.tok.pad_id)
  ref = next_token_logprobs(pol.params, cfg, ids, pm, toks)
  m = np.asarray(mask) > 0
  out = dict(run=a.run, prompts=a.prompts, positions=int(m.sum()), device=jax.devices()[0].device_kind)
  for dt in a.dtypes.split(","):
    c = dataclasses.replace(cfg, kv_cache_dtype=dt)
    got = next_token_logprobs(pol.params, c, ids, pm, toks)
    kl = np.asarray(jnp.sum(jnp.exp(ref) * (ref - got), -1))[m]
    flips = np.asarray(jnp.argmax(ref, -1) != jnp.argmax(got, -1))[m]
    cache = init_cache(c, a.prompts, ids.shape[1] + a.new_tokens)
    out[dt] = dict(kl_mean=float(kl.mean()), kl_max=float(kl.max()), argmax_changed=float(flips.mean()),
                   cache_bytes=int(sum(x.nbytes for layer in cache["layers"] for x in layer.values())))
  f32 = init_cache(cfg, a.prompts, ids.shape[1] + a.new_tokens)
  out["float32"] = dict(cache_bytes=int(sum(x.nbytes for layer in f32["layers"] for x in layer.values())))
  print_result(out, a.json)


if __name__ == "__main__":
  main()
