"""The token discriminator of TLCR (trainer `token_discriminator`, algorithms.md §6.1–6.2).

The LM trunk (initialised from the SFT model: `init_from="auto"` trains or reuses WORKDIR/sft) with a
2-class linear head without bias at every position; `D(a_t | x, a_<t) = softmax(W h_t)[1]`, `h_t` the
hidden state at `a_t` itself. It trains on revision rows `{prompt, chosen, rejected, revised}`: token
labels from aligning `rejected` with its minimal revision `revised` (`jaxalign.data.token_labels`),
soft-target cross-entropy per token (`jaxalign.losses.token`), the rejected and revised parts summed.

Data: the built-in task revises its own rejected completions (`jaxalign.data.revisions`,
`tlcr.revise_frac`, `tlcr.revision_noise`); `data.source=jsonl` reads revision rows (a row without
`revised` is an error naming its file and line). The last `tlcr.eval_pairs` rows are held out.

Evaluation logs `eval/token_accuracy` (the sign of D − ½ against the label of every edited held-out
token), the mean D on positive, negative and unchanged tokens, and on the built-in task
`eval/sign_agreement`: on samples of the SFT policy for the held-out prompts (the distribution RL
feeds it), how often sign(D − ½) agrees with the ground truth's per-token sentiment attribution
(`builtin.sentiment_token_scores`) over the sentiment-bearing tokens.

Params are `{"trunk", "head": {"kernel": [D, 2]}}`; `jaxalign.models.loading.load_discriminator(run_dir)`
gives them back for PPO (`ppo.reward_source=token_discriminator`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign import judges, sampling
from jaxalign.data import builtin, pipeline, revisions
from jaxalign.errors import UserError
from jaxalign.inference import map_rows
from jaxalign.losses.token import token_discriminator_loss, token_metrics
from jaxalign.models import heads
from jaxalign.models.transformer import count_params
from jaxalign.trainers import loop, prologue

SIDES = ("rejected", "revised")


def discriminator_logits(cfg, params, b: dict):
  """`(rejected logits, revised logits)` `[B, C, 2]`, one forward pass (the two on the batch axis)."""
  cat = lambda u, v: jnp.concatenate([u, v], axis=0)
  z = heads.token_logits(cfg, params, cat(b["prompt"], b["prompt"]), cat(b["prompt_mask"], b["prompt_mask"]),
                         cat(b["rejected"], b["revised"]), cat(b["rejected_mask"], b["revised_mask"]))
  return tuple(jnp.split(z, 2))


def discriminator_loss(cfg, *, hard_label: bool):
  def loss_fn(params, mb, frozen):
    del frozen
    zs = discriminator_logits(cfg, params, mb)
    per_row = sum(token_discriminator_loss(z, mb[f"{s}_labels"], mb[f"{s}_mask"], hard_label=hard_label)
                  for z, s in zip(zs, SIDES))
    sums = [token_metrics(z, mb[f"{s}_labels"], mb[f"{s}_mask"]) for z, s in zip(zs, SIDES)]
    metrics = {k: (sums[0][k][0] + sums[1][k][0]) / jnp.maximum(sums[0][k][1] + sums[1][k][1], 1.0)
               for k in sums[0]}
    return jnp.sum(per_row), (jnp.float32(per_row.shape[0]), metrics)
  return loss_fn


# ---- data ----

def revision_examples(config) -> list[dict]:
  d, t = config.data, config.tlcr
  n = int(d.num_examples) + int(t.eval_pairs)
  if d.source == "builtin":
    return revisions.builtin_revision_rows(n, int(config.seed), revise_frac=float(t.revise_frac),
                                           noise=float(t.revision_noise), corrupt_frac=float(d.corrupt_frac),
                                           run_on_frac=float(t.run_on_frac))
  if d.source != "jsonl":
    raise UserError(f"config data.source: the token discriminator needs revision rows (builtin | jsonl with "
                    f'"revised"), not {d.source!r}')
  if not d.path:
    raise UserError("config data.path: required for data.source='jsonl'")
  from jaxalign.data import sources
  rows = sources.read_revision_jsonl(d.path)
  return rows[:n] if int(d.num_examples) > 0 else rows


def build_data(config, tok) -> tuple[dict, dict]:
  d, n_eval = config.data, int(config.tlcr.eval_pairs)
  rows = revision_examples(config)
  if n_eval >= len(rows):
    raise UserError(f"config tlcr.eval_pairs: {n_eval} held-out rows leave no training rows of {len(rows)}")
  tok_rows = lambda rs: revisions.tokenize_revisions(tok, rs, int(d.prompt_len), int(d.completion_len),
                                                     d.prompt_truncation, d.completion_truncation)
  return tok_rows(rows[:len(rows) - n_eval]), tok_rows(rows[len(rows) - n_eval:])


# ---- evaluation ----

def word_token_agreement(tok, prompts, tokens, mask, finished, p) -> tuple[int, int]:
  """`(agreeing, sentiment-bearing)` tokens of decoded samples: sign(D − ½) against the sign of each word's
  ground-truth sentiment (`builtin.sentiment_token_scores`). Needs one token per word (the built-in
  tokenizer); other samples are skipped."""
  agree = total = 0
  for q, t, m, f, pr in zip(prompts, np.asarray(tokens), np.asarray(mask), np.asarray(finished), np.asarray(p)):
    n = int(m.sum()) - int(bool(f))  # the EOS is no word
    words = [tok.decode([int(x)]) for x in t[:n]]
    scores = builtin.sentiment_token_scores(q, " ".join(words))
    if len(scores) != n:
      continue
    for s, d in zip(scores, pr[:n]):
      if s != 0:
        total += 1
        agree += (d > 0.5) == (s > 0)
  return agree, total


def make_evaluator(config, tok, cfg, held: dict, mesh, policy_params):
  bs = int(config.train.batch_size)
  sample_prompts = None
  if config.data.source == "builtin":
    e = config.eval
    sample_prompts = [q for q in builtin.EVAL_PROMPTS for _ in range(max(1, int(e.samples_per_prompt)))]
    ids, pmask = pipeline.encode_prompts(tok, sample_prompts, int(config.data.prompt_len))
    key = jax.random.fold_in(jax.random.key(int(config.seed)), 2**30)
    # the SFT policy's samples, drawn once: what PPO's first rollouts look like
    toks, cmask, fin = sampling.sample(policy_params, ids, pmask, key, cfg=cfg,
                                       max_new_tokens=int(e.max_new_tokens) or int(config.data.completion_len),
                                       eos_id=tok.eos_id, pad_id=tok.pad_id, temperature=float(e.temperature),
                                       top_k=int(e.top_k), top_p=float(e.top_p))
    samples = {k: np.asarray(jax.device_get(v)) for k, v in
               dict(prompt=ids, prompt_mask=pmask, completion=toks, completion_mask=cmask, finished=fin).items()}

  def probs(params, b):
    return tuple(jax.nn.softmax(z, axis=-1)[..., 1] for z in discriminator_logits(cfg, params, b))

  def evaluate(params, step):
    del step
    out = {}
    p_rej, p_rev = map_rows(probs, params, held, mesh, batch_size=bs, desc="eval")[0]
    ps = np.concatenate([p_rej, p_rev]).ravel()
    labs = np.concatenate([held["rejected_labels"], held["revised_labels"]]).ravel()
    m = np.concatenate([held["rejected_mask"], held["revised_mask"]]).ravel() > 0
    for name, sel in (("positive", labs > 0), ("negative", labs < 0), ("unchanged", labs == 0)):
      if (m & sel).any():
        out[f"eval/p_{name}"] = float(ps[m & sel].mean())
    edited = m & (labs != 0)
    if edited.any():
      out["eval/token_accuracy"] = float(np.mean((ps[edited] > 0.5) == (labs[edited] > 0)))
    if sample_prompts is not None:
      fn = lambda prm, b: (heads.token_positive_prob(cfg, prm, b["prompt"], b["prompt_mask"], b["completion"],
                                                     b["completion_mask"]),)
      rows = {k: samples[k] for k in ("prompt", "prompt_mask", "completion", "completion_mask")}
      (p,), _ = map_rows(fn, params, rows, mesh, batch_size=bs, desc="eval samples")
      agree, total = word_token_agreement(tok, sample_prompts, samples["completion"], samples["completion_mask"],
                                          samples["finished"], p)
      out["eval/sign_agreement"] = agree / total if total else float("nan")
      out["eval/sentiment_tokens"] = float(total)
    return out, []
  return evaluate


# ---- training ----

def check(config) -> None:
  t = config.tlcr
  if int(t.eval_pairs) < 0:
    raise UserError(f"config tlcr.eval_pairs: must be >= 0, got {t.eval_pairs}")
  if not 0.0 < float(t.revise_frac) <= 1.0:
    raise UserError(f"config tlcr.revise_frac: must be in (0, 1], got {t.revise_frac}")
  if not 0.0 <= float(t.run_on_frac) <= 1.0:
    raise UserError(f"config tlcr.run_on_frac: must be in [0, 1], got {t.run_on_frac}")
  if not 0.0 <= float(t.revision_noise) < 1.0:
    raise UserError(f"config tlcr.revision_noise: must be in [0, 1), got {t.revision_noise}")


def train(config, workdir: str):
  """Trains the token discriminator; returns the final `{"trunk", "head"}` params."""
  run = prologue.begin(config, workdir, policy=False)
  mesh, tok, cfg = run.mesh, run.tok, run.cfg
  train_arrays, held = build_data(config, tok)
  std = float(config.tlcr.head_std)
  params = {"trunk": jax.tree.map(jnp.copy, run.reference),
            "head": heads.init_token_head(cfg, jax.random.fold_in(jax.random.key(int(config.seed)), 1), mesh,
                                          std=None if std < 0 else std)}
  evaluate = make_evaluator(config, tok, cfg, held, mesh, run.reference) if len(held["prompt"]) else None

  def tokens_fn(hb):
    real = 2 * float(hb["prompt_mask"].sum()) + float(hb["rejected_mask"].sum() + hb["revised_mask"].sum())
    return real, real, 0.0

  # the 2-class head replaces the unembedding
  flops_params = count_params(params["trunk"], cfg)["flops_params"] - cfg.vocab_size * cfg.d_model + 2 * cfg.d_model
  state, _ = loop.run_loss(config, workdir, mesh=mesh, params=params, arrays=train_arrays,
                           loss_fn=discriminator_loss(cfg, hard_label=bool(config.tlcr.hard_label)),
                           evaluate=evaluate, tokens_fn=tokens_fn, flops_params=flops_params,
                           meta={"kind": "token_discriminator"}, desc="discriminator")
  return state.params
