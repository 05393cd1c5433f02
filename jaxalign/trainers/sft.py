"""Supervised fine-tuning: token-mean negative log-likelihood of completions given prompts."""

from __future__ import annotations

import jax.numpy as jnp

from jaxalign.data import pipeline
from jaxalign.evaluation import builtin_evaluate
from jaxalign.models.transformer import count_params
from jaxalign.models.loading import initial_params
from jaxalign.scoring import completion_token_logps
from jaxalign.trainers import loop, setup


def sft_loss(cfg, chunk: int):
  def loss_fn(params, mb, frozen):
    del frozen
    lp = completion_token_logps(cfg, params, mb["prompt"], mb["prompt_mask"], mb["completion"],
                                mb["completion_mask"], chunk_size=chunk)
    m = mb["completion_mask"].astype(jnp.float32)
    nll_sum = -jnp.sum(jnp.where(m > 0, lp, 0.0))
    count = jnp.sum(m)
    return nll_sum, (count, {"nll_per_sequence": nll_sum / mb["completion"].shape[0]})
  return loss_fn


def check(config) -> None:
  """SFT has no section of its own: the shared keys are all it reads."""


def train(config, workdir: str):
  """Runs SFT; returns (final params, mesh, tokenizer, model config)."""
  mesh, tok, cfg = setup.begin(config, workdir)
  d = config.data
  arrays = pipeline.tokenize_sft(tok, pipeline.sft_examples(d, int(config.seed)), d.prompt_len,
                                 d.completion_len, d.prompt_truncation, d.completion_truncation)
  params = initial_params(config, cfg, mesh, config.init_from)
  evaluate = builtin_evaluate(config, tok, cfg, None)

  def tokens_fn(hb):
    real = float(hb["prompt_mask"].sum() + hb["completion_mask"].sum())
    return real, real, 0.0

  state, _ = loop.run_loss(config, workdir, mesh=mesh, params=params, arrays=arrays,
                           loss_fn=sft_loss(cfg, int(config.train.logprob_chunk)), evaluate=evaluate,
                           tokens_fn=tokens_fn, flops_params=count_params(params, cfg)["flops_params"], desc="sft")
  return state.params, mesh, tok, cfg
