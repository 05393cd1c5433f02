"""Evaluation on any data: a held-out split, held-out losses and implicit rewards, samples, a judge.

The built-in task has its own evaluator (`jaxalign.evaluation`, the ground truth). On every other
source the rows are split once, deterministically (`split_heldout`): `data.eval_path` (or TFDS's
`data.eval_split`) when given, else the rows whose prompt hashes below `data.eval_fraction` (so a
prompt is never on both sides), at most `data.eval_examples` of them. Every `eval.every` steps and
at the end:

  `HeldoutEvaluator`                          the run's loss as `eval/loss` over the held-out rows, with
                                              its implicit rewards, against reference log-probs computed
                                              once (cached): offline pairwise family `eval/rewards/{chosen,
                                              rejected,accuracies,margins}`, `eval/logps/{chosen,rejected}`;
                                              unpaired family (KTO, BCO) `eval/rewards/{desirable,
                                              undesirable,accuracies,margins}`, `eval/logps/{desirable,
                                              undesirable}`
  `SampleEvaluator` (any trainer)             policy and reference samples on `eval.prompts` held-out
                                              prompts (chat template applied by the tokenizer) into
                                              `samples.jsonl`; `eval/kl` (mean summed log-ratio of the
                                              policy samples); with `eval.judge` a reward-model or
                                              preference-model run directory (or `builtin`),
                                              `eval/win_rate` of policy over reference samples (ties ½)

Sampling keys are functions of (seed, step): a resumed run evaluates as an uninterrupted one.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign import judges, sampling
from jaxalign.data import builtin
from jaxalign.data.heldout import split_heldout  # noqa: F401  (re-exported)
from jaxalign.data.pipeline import encode_prompts
from jaxalign.errors import UserError
from jaxalign.logprobs import sequence_logps
from jaxalign.scoring import completion_token_logps


def judge_from_config(config, mesh):
  """`eval.judge` -> (name, judge) where judge is None, "builtin" or a loaded `ScalarModel`."""
  name = str(config.eval.get("judge", "auto"))
  if name == "auto":
    name = "builtin" if config.data.source == "builtin" else "none"
  if name in ("none", ""):
    return "none", None
  if name == "builtin":
    return "builtin", "builtin"
  if not os.path.isdir(name):
    raise UserError(f"config eval.judge: {name}: not builtin, none or a run directory")
  from jaxalign.models.loading import load_reward_model
  return name, load_reward_model(name, mesh)


class SampleEvaluator:
  """Policy vs reference samples on held-out prompts: `eval/kl`, the judge's `eval/win_rate`, sample rows."""

  def __init__(self, config, tok, model_cfg, prompts: list[str], mesh, *, max_new_tokens: int | None = None):
    e = config.eval
    self.tok, self.cfg, self.ecfg, self.seed = tok, model_cfg, e, int(config.seed)
    self.prompts = [p for p in prompts for _ in range(int(e.samples_per_prompt))]
    self.prompt_ids, self.prompt_mask = encode_prompts(tok, self.prompts, int(config.data.prompt_len),
                                                       config.data.prompt_truncation)
    self.max_new = int(max_new_tokens or e.max_new_tokens)
    self.judge_name, self.judge = judge_from_config(config, mesh)
    if self.judge is not None and self.judge != "builtin" and self.judge.cfg.vocab_size < tok.vocab_size:
      raise UserError(f"config eval.judge: {self.judge_name}: its vocabulary ({self.judge.cfg.vocab_size}) is "
                      f"smaller than the policy tokenizer's ({tok.vocab_size}); judge with a model of the same "
                      "tokenizer")
    self._ref = None

  def _sample(self, params, key):
    e = self.ecfg
    return sampling.sample(params, self.prompt_ids, self.prompt_mask, key, cfg=self.cfg,
                           max_new_tokens=self.max_new, eos_id=self.tok.eos_id, pad_id=self.tok.pad_id,
                           temperature=float(e.temperature), top_k=int(e.top_k), top_p=float(e.top_p))

  @functools.partial(jax.jit, static_argnums=(0,))
  def _seq_logps(self, params, tokens, mask):
    return sequence_logps(completion_token_logps(self.cfg, params, self.prompt_ids, self.prompt_mask, tokens,
                                                 mask), mask)

  def _judge_scores(self, texts, tokens, mask, finished) -> np.ndarray | None:
    if self.judge is None:
      return None
    if self.judge == "builtin":
      return np.asarray(builtin.rewards(self.prompts, texts, np.asarray(finished).tolist()), np.float64)
    if self.judge.kind != "reward_model":
      return None
    m = self.judge
    fn = jax.jit(lambda p, a, b, c, d: judges.reward_scores([m.cfg], [p], a, b, c, d)[:, 0])
    return np.asarray(fn(m.params, self.prompt_ids, self.prompt_mask, tokens, mask), np.float64)

  def reference(self, ref_params):
    if self._ref is None:  # the reference never changes: sample it once per run
      key = jax.random.fold_in(jax.random.key(self.seed), 2**30)
      tokens, mask, finished = self._sample(ref_params, key)
      texts = judges.decode(self.tok, tokens, mask, finished)
      self._ref = dict(tokens=tokens, mask=mask, finished=finished, texts=texts,
                       scores=self._judge_scores(texts, tokens, mask, finished))
    return self._ref

  def __call__(self, params, ref_params, step: int) -> tuple[dict, list[dict]]:
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(self.seed), 2**30 + 1), step)
    tokens, mask, finished = self._sample(params, key)
    texts = judges.decode(self.tok, tokens, mask, finished)
    ref = self.reference(ref_params)
    kl = self._seq_logps(params, tokens, mask) - self._seq_logps(ref_params, tokens, mask)
    metrics = {"eval/kl": float(jnp.mean(kl)), "eval/length": float(np.asarray(mask).sum(1).mean()),
               "eval/finished": float(np.asarray(finished).mean()),
               "eval/reference_length": float(np.asarray(ref["mask"]).sum(1).mean())}
    scores = self._judge_scores(texts, tokens, mask, finished)
    prob = None
    if scores is not None:
      metrics["eval/win_rate"] = builtin.win_rate(scores, ref["scores"])
      metrics["eval/judge_score"] = float(np.mean(scores))
      metrics["eval/reference_judge_score"] = float(np.mean(ref["scores"]))
    elif self.judge is not None:  # a preference model judges each (policy, reference) pair
      m = self.judge
      fn = jax.jit(lambda p, *a: judges.preference(m, p, *a)[0])
      prob = np.asarray(fn(m.params, self.prompt_ids, self.prompt_mask, tokens, mask, ref["tokens"], ref["mask"]))
      metrics["eval/win_rate"] = float(np.mean((prob > 0.5) + 0.5 * (prob == 0.5)))
      metrics["eval/judge_prob"] = float(np.mean(prob))
    rows = []
    for i in range(len(texts)):
      r = dict(prompt=self.prompts[i], policy=texts[i], reference=ref["texts"][i], judge=self.judge_name)
      if scores is not None:
        r.update(policy_score=float(scores[i]), reference_score=float(ref["scores"][i]))
      if prob is not None:
        r["p_policy_wins"] = float(prob[i])
      rows.append(r)
    return metrics, rows


class HeldoutEvaluator:
  """A held-out loss and its implicit-reward metrics over held-out rows (the offline family's pairs, the
  unpaired family's rows), plus `SampleEvaluator` on their prompts."""

  def __init__(self, config, tok, model_cfg, held: dict, prompts: list[str], mesh, *, logps, loss,
               ref_params, cache_dir, batch_size: int, reference_free: bool = False,
               cache_name: str = "eval_reference_logps"):
    """held: the tokenized held-out rows; prompts: their prompt texts; logps(params, batch) -> a tuple of
    per-row columns (summed completion log-probs: `(chosen, rejected)` for pairs); loss(policy columns,
    reference columns, held) -> (mean loss, metrics). Reference columns are computed once (cached)."""
    from jaxalign.inference import map_rows
    self.held, self.mesh, self.bs, self.logps, self.loss = held, mesh, batch_size, logps, loss
    self.map_rows = map_rows
    if not reference_free:
      self.ref, _ = map_rows(logps, ref_params, held, mesh, batch_size=batch_size,
                             desc="held-out reference log-probs", cache=(cache_dir, cache_name))
    else:  # a reference-free loss: its metrics are against zeros, as in its training step
      self.ref = None
    self.ref_params = ref_params
    prompts = list(dict.fromkeys(prompts))[:int(config.eval.get("prompts", 16))]
    self.samples = (SampleEvaluator(config, tok, model_cfg, prompts, mesh) if ref_params is not None and prompts
                    and int(config.eval.samples_per_prompt) > 0 else None)

  def __call__(self, params, step: int) -> tuple[dict, list[dict]]:
    pol, _ = self.map_rows(self.logps, params, self.held, self.mesh, batch_size=self.bs, desc="held-out log-probs")
    ref = self.ref if self.ref is not None else tuple(np.zeros_like(c) for c in pol)
    f32 = lambda cols: tuple(jnp.asarray(c, jnp.float32) for c in cols)
    loss, metrics = self.loss(f32(pol), f32(ref), self.held)
    out = {"eval/loss": float(loss), **{f"eval/{k}": float(v) for k, v in metrics.items()}}
    rows = []
    if self.samples is not None:
      m, rows = self.samples(params, self.ref_params, step)
      out.update(m)
    return out, rows


def sample_evaluate(config, tok, model_cfg, ref_params, mesh, prompts: list[str] | None = None):
  """`evaluate(params, step)` for `loop.run` on a user source: `SampleEvaluator` on the held-out prompts
  (`pipeline.heldout_prompts`, or `prompts`); None when there are none or sampling is off."""
  from jaxalign.data import pipeline
  if prompts is None:
    prompts = pipeline.heldout_prompts(config.data, int(config.seed))
  prompts = prompts[:int(config.eval.get("prompts", 16))]
  if not prompts or int(config.eval.samples_per_prompt) <= 0 or ref_params is None:
    return None
  ev = SampleEvaluator(config, tok, model_cfg, prompts, mesh)
  return lambda params, step: ev(params, ref_params, step)
