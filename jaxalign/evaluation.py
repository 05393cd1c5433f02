"""Evaluation on the built-in task: policy samples against reference samples, by the ground truth.

On the held-out prompts, each prompt is sampled `samples_per_prompt` times from the
policy and from the reference. `eval/win_rate` compares the ground-truth reward of
the i-th policy sample with the i-th reference sample of the same prompt (ties ½);
`eval/kl` is the mean summed log-ratio log π(y) − log π_ref(y) over policy samples,
an unbiased estimate of the sequence KL(π || π_ref). Sampling keys are functions of
(seed, step), so a resumed run evaluates exactly like an uninterrupted one.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign import judges, sampling
from jaxalign.data import builtin
from jaxalign.data.pipeline import encode_prompts
from jaxalign.logprobs import sequence_logps
from jaxalign.scoring import completion_token_logps


class BuiltinEvaluator:
  def __init__(self, tok, model_cfg, eval_cfg, prompt_len: int, seed: int):
    self.tok, self.cfg, self.ecfg, self.seed = tok, model_cfg, eval_cfg, seed
    prompts = builtin.ReviewTask(seed).eval_prompts()
    self.prompts = [p for p in prompts for _ in range(int(eval_cfg.samples_per_prompt))]
    self.prompt_ids, self.prompt_mask = encode_prompts(tok, self.prompts, prompt_len)
    self._ref_cache = None

  def _sample(self, params, key):
    e = self.ecfg
    return sampling.sample(params, self.prompt_ids, self.prompt_mask, key, cfg=self.cfg,
                           max_new_tokens=int(e.max_new_tokens), eos_id=self.tok.eos_id,
                           pad_id=self.tok.pad_id, temperature=float(e.temperature),
                           top_k=int(e.top_k), top_p=float(e.top_p))

  @functools.partial(jax.jit, static_argnums=(0,))
  def _seq_logps(self, params, tokens, mask):
    lp = completion_token_logps(self.cfg, params, self.prompt_ids, self.prompt_mask, tokens, mask)
    return sequence_logps(lp, mask)

  def _score(self, tokens, mask, finished):
    texts = judges.decode(self.tok, tokens, mask, finished)
    return texts, builtin.rewards(self.prompts, texts, np.asarray(finished).tolist())

  def reference(self, ref_params):
    if self._ref_cache is None:  # the reference never changes: sample it once per run
      key = jax.random.fold_in(jax.random.key(self.seed), 2**30)
      tokens, mask, finished = self._sample(ref_params, key)
      texts, rewards = self._score(tokens, mask, finished)
      valid = [builtin.is_valid(p, t, bool(f)) for p, t, f in zip(self.prompts, texts, np.asarray(finished))]
      self._ref_cache = dict(texts=texts, rewards=rewards, valid=np.mean(valid))
    return self._ref_cache

  def __call__(self, params, ref_params, step: int) -> tuple[dict, list[dict]]:
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(self.seed), 2**30 + 1), step)
    tokens, mask, finished = self._sample(params, key)
    texts, rewards = self._score(tokens, mask, finished)
    fin = np.asarray(finished)
    valid = np.array([builtin.is_valid(p, t, bool(f)) for p, t, f in zip(self.prompts, texts, fin)])
    metrics = {"eval/gt_reward": float(np.mean(rewards)), "eval/valid": float(valid.mean()),
               "eval/finished": float(fin.mean()),
               "eval/length": float(np.asarray(mask).sum(1).mean()),
               "eval/sentiment": float(np.mean([builtin.sentiment_score(p, t) for p, t in zip(self.prompts, texts)])),
               "eval/politeness": float(np.mean([builtin.politeness_score(p, t)
                                                 for p, t in zip(self.prompts, texts)]))}
    if ref_params is not None:
      ref = self.reference(ref_params)
      kl = self._seq_logps(params, tokens, mask) - self._seq_logps(ref_params, tokens, mask)
      metrics.update({"eval/win_rate": builtin.win_rate(rewards, ref["rewards"]),
                      "eval/kl": float(jnp.mean(kl)),
                      "eval/reference_gt_reward": float(np.mean(ref["rewards"])),
                      "eval/reference_valid": float(ref["valid"])})
    samples = [dict(prompt=p, completion=t, reward=float(r))
               for p, t, r in list(zip(self.prompts, texts, rewards))[::max(1, len(texts) // 8)]]
    return metrics, samples


def builtin_evaluate(config, tok, model_cfg, ref_params):
  """`evaluate(params, step)` against `ref_params` for `loop.run` when the data are the built-in task, or come
  from it through a file (`eval.task="builtin"`, e.g. RLTHF's relabelled built-in pairs) (`ref_params=None`: the
  policy's own samples only, as SFT reports), else None."""
  if config.data.source != "builtin" and config.eval.get("task", "auto") != "builtin":
    return None
  ev = BuiltinEvaluator(tok, model_cfg, config.eval, int(config.data.prompt_len), int(config.seed))
  return lambda params, step: ev(params, ref_params, step)
