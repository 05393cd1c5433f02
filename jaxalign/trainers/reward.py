"""Reward models (Bradley–Terry) and pairwise preference models, trained on preference pairs.

Both put a scalar head (`jaxalign.models.heads`) on a transformer trunk initialised from
an SFT run (`init_from="auto"` trains or reuses WORKDIR/sft) and reuse the shared loop.

  reward_model      r(x, y) at the last real token; loss −log σ(r_w − r_l − m) + η(r_w + r_l)²
  preference_model  f(x, A, B) on `prompt | A | sep | B` (`reward.pm_readout`, see `heads.pair_logit`);
                    trained on both orders of each pair
                    (BCE, label 1 for chosen-first, 0 for rejected-first) and symmetrised at
                    inference: P(A≻B) = ½(σ(f(A,B)) + 1 − σ(f(B,A)))

On the built-in task, pairs are labelled Bradley–Terry on one ground-truth property
(`reward.property`); evaluation on held-out pairs logs `eval/accuracy` (against the noisy
labels), `eval/accuracy_vs_ground_truth` and `eval/label_ceiling` (how often the noisy
labels themselves agree with the ground truth), both over pairs whose ground truth is not tied.
`jaxalign.models.loading.load_reward_model(run_dir)` gives back `(kind, cfg, params, sep_id, readout)`
for PPO and the online methods, which score inside jit through `jaxalign.judges`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign import judges
from jaxalign.data import builtin, pipeline
from jaxalign.errors import UserError
from jaxalign.inference import map_rows
from jaxalign.losses import reward_model as rm_losses
from jaxalign.models import heads
from jaxalign.models.loading import separator_id
from jaxalign.models.transformer import ModelConfig, count_params
from jaxalign.trainers import loop, prologue


# ---- losses (per microbatch, the loop's `loss_fn` contract) ----

def pair_scores(cfg: ModelConfig, params, b: dict):
  """Rewards `([B], [B])` of chosen and rejected, in one forward pass."""
  return judges.pair_rewards(cfg, params, b["prompt"], b["prompt_mask"], b["chosen"], b["chosen_mask"],
                             b["rejected"], b["rejected_mask"])


def bt_loss(cfg: ModelConfig, *, margin: bool, center_coef: float):
  def loss_fn(params, mb, frozen):
    del frozen
    rc, rr = pair_scores(cfg, params, mb)
    per_pair = rm_losses.bradley_terry(rc, rr, margin=mb["margin"] if margin else None, center_coef=center_coef)
    return jnp.sum(per_pair), (jnp.float32(per_pair.shape[0]), rm_losses.reward_metrics(rc, rr))
  return loss_fn


def pair_logits(cfg: ModelConfig, params, b: dict, sep_id: int, readout: str = "difference"):
  """`(f(x, chosen, rejected), f(x, rejected, chosen))`, one forward pass."""
  return heads.both_order_logits(cfg, params, b["prompt"], b["prompt_mask"], b["chosen"], b["chosen_mask"],
                                 b["rejected"], b["rejected_mask"], sep_id=sep_id, readout=readout)


def pm_loss(cfg: ModelConfig, sep_id: int, readout: str):
  def loss_fn(params, mb, frozen):
    del frozen
    f_cr, f_rc = pair_logits(cfg, params, mb, sep_id, readout)
    per_pair = 0.5 * (rm_losses.preference_bce(f_cr, 1.0) + rm_losses.preference_bce(f_rc, 0.0))
    p = heads.symmetrised_prob(f_cr, f_rc)
    metrics = {"accuracy": jnp.mean((p > 0.5).astype(p.dtype)), "prob_chosen": jnp.mean(p),
               # order inconsistency before symmetrisation: σ(f(c,r)) + σ(f(r,c)) − 1 (0 when consistent)
               "order_gap": jnp.mean(jax.nn.sigmoid(f_cr) + jax.nn.sigmoid(f_rc) - 1.0)}
    return jnp.sum(per_pair), (jnp.float32(per_pair.shape[0]), metrics)
  return loss_fn


# ---- data ----

def _rater_margin(delta: np.ndarray, temperature: float) -> np.ndarray:
  """Llama 2's small-margin scale from a simulated rater's confidence σ(Δ/T) in the chosen side."""
  p = 1.0 / (1.0 + np.exp(-delta / temperature))
  return np.select([p >= 0.9, p >= 0.75, p >= 0.6], [1.0, 2 / 3, 1 / 3], 0.0)


def _gt(rows: list[dict], prop: str) -> tuple[np.ndarray, np.ndarray]:
  score = lambda r, side: builtin.property_score(r["prompt"], r[side], r.get(f"{side}_finished", True), prop)
  return (np.array([score(r, "chosen") for r in rows]), np.array([score(r, "rejected") for r in rows]))


def _tokenize(config, tok, rows: list[dict]) -> dict:
  d = config.data
  return pipeline.tokenize_preference(tok, rows, d.prompt_len, d.completion_len, d.prompt_truncation,
                                      d.completion_truncation)


def build_data(config, tok) -> tuple[dict, dict, dict | None]:
  """`(train arrays, held-out arrays, held-out ground truth or None)`."""
  d, r = config.data, config.reward
  seed, n_eval = int(config.seed), int(r.eval_pairs)
  if d.source == "builtin":
    rows = builtin.property_preference_pairs(int(d.num_examples) + n_eval, seed=seed, prop=r.property,
                                             corrupt_frac=float(d.corrupt_frac),
                                             label_temperature=float(r.label_temperature))
  else:
    if r.margin:
      raise UserError("config reward.margin: needs per-pair margins, which only the built-in task provides")
    rows = pipeline.preference_examples(d, seed)
  if n_eval >= len(rows):
    raise UserError(f"config reward.eval_pairs: {n_eval} held-out pairs leave no training pairs of {len(rows)}")
  train_rows, eval_rows = (rows[:len(rows) - n_eval], rows[len(rows) - n_eval:])
  train, held = _tokenize(config, tok, train_rows), _tokenize(config, tok, eval_rows)
  gt = None
  if d.source == "builtin":
    # Built-in completions are never truncated to nothing, so rows align with the examples.
    assert len(train["prompt"]) == len(train_rows) and len(held["prompt"]) == len(eval_rows)
    gc, gr = _gt(eval_rows, r.property)
    gt = dict(chosen=gc, rejected=gr)
    if r.margin:
      tc, tr = _gt(train_rows, r.property)
      train["margin"] = _rater_margin(tc - tr, float(r.label_temperature)).astype(
          np.float32 if config.precision == "float32" else np.float64)
  return train, held, gt


# ---- evaluation ----

def pair_accuracies(diff: np.ndarray, gt: dict | None) -> dict[str, float]:
  """Held-out accuracies from the model's `score(chosen) − score(rejected)` (or `P − ½`) per pair.

  Strict: a zero difference is wrong. Against the ground truth, pairs whose ground truth
  is tied are left out (no right answer); `label_ceiling` is the noisy labels' own
  agreement with the ground truth on the same pairs.
  """
  out = {"eval/accuracy": float(np.mean(diff > 0))}
  if gt is not None:
    gdiff = gt["chosen"] - gt["rejected"]
    untied = gdiff != 0
    right = np.where(gdiff > 0, diff > 0, diff < 0)
    out["eval/accuracy_vs_ground_truth"] = float(np.mean(right[untied])) if untied.any() else float("nan")
    out["eval/label_ceiling"] = float(np.mean(gdiff[untied] > 0)) if untied.any() else float("nan")
    out["eval/ground_truth_ties"] = float(np.mean(~untied))
  return out


def _evaluator(config, kind: str, cfg: ModelConfig, held: dict, gt: dict | None, mesh, sep_id: int,
               readout: str):
  bs = int(config.train.batch_size)

  if kind == "reward_model":
    def fn(p, b):
      return pair_scores(cfg, p, b)
  else:
    def fn(p, b):
      return pair_logits(cfg, p, b, sep_id, readout)

  def evaluate(params, step):
    del step
    a, b = (np.asarray(x, np.float64) for x in map_rows(fn, params, held, mesh, batch_size=bs, desc="eval")[0])
    if kind == "reward_model":
      diff = a - b
      loss = np.logaddexp(0.0, -diff)
      out = {"eval/reward_mean": float(np.mean([a, b])), "eval/reward_std": float(np.std([a, b]))}
    else:  # a = f(x, chosen, rejected), b = f(x, rejected, chosen)
      p = 0.5 + 0.5 * (1 / (1 + np.exp(-a)) - 1 / (1 + np.exp(-b)))
      diff = p - 0.5
      loss = -np.log(np.clip(p, 1e-12, 1.0))
      out = {"eval/prob_chosen": float(np.mean(p))}
    out["eval/loss"] = float(np.mean(loss))
    out.update(pair_accuracies(diff, gt))
    return out, []
  return evaluate


# ---- training ----

def check(config) -> None:
  if int(config.reward.eval_pairs) < 0:
    raise UserError(f"config reward.eval_pairs: must be >= 0, got {config.reward.eval_pairs}")


def _check_length(config, kind: str, cfg: ModelConfig) -> None:
  need = int(config.data.prompt_len) + 2 * int(config.data.completion_len) + 1
  if kind == "preference_model" and need > cfg.max_len:
    raise UserError(f"config data.prompt_len + 2 * data.completion_len + 1 = {need} exceeds the model's "
                    f"max_len={cfg.max_len} (the preference model reads prompt | A | sep | B; set model.max_len)")


def _train(config, workdir: str, kind: str):
  run = prologue.begin(config, workdir, policy=False, check_model=lambda cfg: _check_length(config, kind, cfg))
  mesh, tok, cfg = run.mesh, run.tok, run.cfg
  train_arrays, held, gt = build_data(config, tok)
  std = float(config.reward.head_std)
  params = {"trunk": run.reference,
            "head": heads.init_head(cfg, jax.random.fold_in(jax.random.key(int(config.seed)), 1), mesh,
                                    std=None if std < 0 else std)}
  sep = separator_id(tok)
  if kind == "reward_model":
    loss_fn = bt_loss(cfg, margin=bool(config.reward.margin), center_coef=float(config.reward.center_coef))
  else:
    loss_fn = pm_loss(cfg, sep, config.reward.pm_readout)
  evaluate = None
  if len(held["prompt"]):
    evaluate = _evaluator(config, kind, cfg, held, gt, mesh, sep, config.reward.pm_readout)

  def tokens_fn(hb):
    prompts, comps = float(hb["prompt_mask"].sum()), float(hb["chosen_mask"].sum() + hb["rejected_mask"].sum())
    if kind == "reward_model":  # rows (x, chosen) and (x, rejected)
      real = 2 * prompts + comps
    else:  # rows (x, chosen, sep, rejected) and (x, rejected, sep, chosen)
      real = 2 * (prompts + comps + hb["prompt"].shape[0])
    return real, real, 0.0

  # The head replaces the unembedding: no logits are computed, so the output matrix does no FLOPs.
  flops_params = count_params(params["trunk"], cfg)["flops_params"] - cfg.vocab_size * cfg.d_model + cfg.d_model
  state, _ = loop.run_loss(config, workdir, mesh=mesh, params=params, arrays=train_arrays, loss_fn=loss_fn,
                           evaluate=evaluate, tokens_fn=tokens_fn, flops_params=flops_params,
                           meta={"kind": kind, "sep_id": sep}, desc=kind)
  return state.params


def train_reward_model(config, workdir: str):
  """Bradley–Terry reward model; returns the final `{"trunk", "head"}` params."""
  return _train(config, workdir, "reward_model")


def train_preference_model(config, workdir: str):
  """Pairwise preference model; returns the final `{"trunk", "head"}` params."""
  return _train(config, workdir, "preference_model")
