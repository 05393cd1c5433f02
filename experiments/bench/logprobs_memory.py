"""Peak memory and time of chunked `token_logps` vs plain `token_logps_reference`.

  python experiments/bench/logprobs_memory.py --chunk_size 8192

Memory comes from XLA's compiled memory analysis (`temp` = scratch buffers, `total` =
temp + arguments + outputs - aliased), for the forward and for forward+backward
(gradient of the summed log-probs w.r.t. hidden states and the output matrix).
Also checks that the two implementations agree. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxalign.config import base_config  # noqa: E402
from jaxalign.logprobs import token_logps, token_logps_reference  # noqa: E402


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--length", type=int, default=512)
  p.add_argument("--hidden", type=int, default=768)
  p.add_argument("--vocab", type=int, default=32000)
  p.add_argument("--chunk_size", type=int, default=None,
                 help="default: the library's (base config train.logprob_chunk)")
  p.add_argument("--repeats", type=int, default=3, help="timed calls after one warm-up call (median)")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  if args.chunk_size is None:
    args.chunk_size = int(base_config().train.logprob_chunk)
  return args


def memory(compiled) -> dict:
  m = compiled.memory_analysis()
  total = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
  return dict(temp_bytes=int(m.temp_size_in_bytes), total_bytes=int(total))


def timed(compiled, args, repeats: int) -> tuple[float, object]:
  out = jax.block_until_ready(compiled(*args))  # first call: allocation, caches
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times), out


def main(argv=None):
  a = parse_args(argv)
  k1, k2, k3 = jax.random.split(jax.random.key(a.seed), 3)
  # Scale as a final-norm hidden state and a lecun-normal head would give (logits of O(1)).
  h = jax.random.normal(k1, (a.batch, a.length, a.hidden), jnp.float32)
  w = jax.random.normal(k2, (a.hidden, a.vocab), jnp.float32) / jnp.sqrt(a.hidden)
  t = jax.random.randint(k3, (a.batch, a.length), 0, a.vocab, jnp.int32)

  chunked = lambda h, w, t: token_logps(h, w, t, chunk_size=a.chunk_size)
  impls = {"chunked": chunked, "plain": token_logps_reference}
  out = dict(batch=a.batch, length=a.length, hidden=a.hidden, vocab=a.vocab, chunk_size=a.chunk_size,
             dtype="float32", logits_bytes=a.batch * a.length * a.vocab * 4)
  results = {}
  for name, f in impls.items():
    # Targets are an argument, not a constant, so neither version gets them folded in.
    fwd = jax.jit(f).lower(h, w, t).compile()
    grad = jax.grad(lambda h, w, t: jnp.sum(f(h, w, t)), argnums=(0, 1))
    bwd = jax.jit(grad).lower(h, w, t).compile()
    fwd_time, fwd_out = timed(fwd, (h, w, t), a.repeats)
    bwd_time, bwd_out = timed(bwd, (h, w, t), a.repeats)
    results[name] = (fwd_out, bwd_out)
    out[name] = dict(forward={**memory(fwd), "time_s": fwd_time},
                     forward_backward={**memory(bwd), "time_s": bwd_time})

  for kind in ("forward", "forward_backward"):
    c, p = out["chunked"][kind], out["plain"][kind]
    out[f"ratio_{kind}"] = dict(temp=c["temp_bytes"] / max(p["temp_bytes"], 1),
                                total=c["total_bytes"] / max(p["total_bytes"], 1),
                                time=c["time_s"] / p["time_s"])

  (c_fwd, (c_dh, c_dw)), (p_fwd, (p_dh, p_dw)) = results["chunked"], results["plain"]
  maxdiff = lambda x, y: float(jnp.max(jnp.abs(x - y)))
  out["max_abs_diff"] = dict(logps=maxdiff(c_fwd, p_fwd), grad_hidden=maxdiff(c_dh, p_dh),
                             grad_w=maxdiff(c_dw, p_dw))
  # float32 sums over 32k columns: 1e-3 absolute on log-probs of magnitude ~10 is ample.
  assert out["max_abs_diff"]["logps"] < 1e-3, out["max_abs_diff"]
  assert out["max_abs_diff"]["grad_hidden"] < 1e-3 and out["max_abs_diff"]["grad_w"] < 1e-2, out["max_abs_diff"]
  out["device"] = jax.devices()[0].platform
  out["jax_version"] = jax.__version__
  print(json.dumps(out))


if __name__ == "__main__":
  main()
