"""Pairwise preference losses beyond plain DPO (algorithms.md §1.4–1.5, §2, §3.3, §8.1, §8.3, §8.4).

All share the DPO signature: `policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
reference_rejected_logps` (`[B]` summed completion log-probs), keyword-only hyper-parameters, per-pair
losses `[B]` out, math in the input dtype. Extra per-pair arrays (token counts, NLL, δ) are keyword-only
arguments defaulting to None; `jaxalign.losses.EXTRA_INPUTS` lists them per loss so the trainer knows what
to pass. Reference-free losses (`simpo`, `orpo`) ignore the reference arguments: the trainer may pass zeros
and skip the reference forward pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxalign.losses.dpo import log_ratio_margin

Array = jax.Array

_LN2 = 0.6931471805599453  # log 2: TRL's log1mexp branch point


def _require(value, arg: str, loss: str):
  """Fails loudly (outside jit tracing too) when the trainer did not supply an extra input."""
  if value is None:
    raise ValueError(f"loss {loss!r} needs the keyword array `{arg}` (see jaxalign.losses.EXTRA_INPUTS); "
                     f"the trainer must pass it")
  return value


def _average(summed: Array, lengths: Array) -> Array:
  """`S / max(1, n)` (§0.2): empty completions must not divide by zero."""
  n = jnp.asarray(lengths).astype(summed.dtype)
  return summed / jnp.maximum(n, 1)


def _check_epsilon(epsilon, upper: float, loss: str):
  # Only concrete Python numbers can be checked; traced values pass through unchecked.
  if isinstance(epsilon, (int, float)) and not 0.0 <= epsilon < upper:
    raise ValueError(f"loss {loss!r}: epsilon must be in [0, {upper}), got {epsilon}")


def cdpo(policy_chosen_logps: Array, policy_rejected_logps: Array, reference_chosen_logps: Array,
         reference_rejected_logps: Array, *, beta: float = 0.1, epsilon: float = 0.1) -> Array:
  """Conservative DPO (§1.4): `−(1−ε) log σ(βh) − ε log σ(−βh)`.

  Label-smoothed BCE against a soft target; minimised at the finite margin `βh* = log((1−ε)/ε)`.
  Equals TRL ≤ v0.28 `sigmoid` with `label_smoothing=ε` (TRL ≥ v0.29 ignores ε there).
  """
  _check_epsilon(epsilon, 1.0, "cdpo")
  z = beta * log_ratio_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                              reference_rejected_logps)
  return (1 - epsilon) * jax.nn.softplus(-z) + epsilon * jax.nn.softplus(z)


def robust(policy_chosen_logps: Array, policy_rejected_logps: Array, reference_chosen_logps: Array,
           reference_rejected_logps: Array, *, beta: float = 0.1, epsilon: float = 0.1) -> Array:
  """Robust DPO (§1.5): `[−(1−ε) log σ(βh) + ε log σ(−βh)] / (1−2ε)`, ε ∈ [0, ½).

  Unbiased for the clean DPO loss under label-flip rate ε, but UNBOUNDED BELOW: it is negative at large
  margins and its gradient `∂L/∂(βh) → −ε/(1−2ε)` never vanishes, so margins keep growing.
  """
  _check_epsilon(epsilon, 0.5, "robust")  # 1−2ε in the denominator
  z = beta * log_ratio_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                              reference_rejected_logps)
  return ((1 - epsilon) * jax.nn.softplus(-z) - epsilon * jax.nn.softplus(z)) / (1 - 2 * epsilon)


def hinge(policy_chosen_logps: Array, policy_rejected_logps: Array, reference_chosen_logps: Array,
          reference_rejected_logps: Array, *, beta: float = 0.1) -> Array:
  """TRL `hinge` = RSO's "hinge-norm" (§8.1): `relu(1 − βh)` on reference-normalised h (margin 1/β).

  Registered as both `hinge` and `hinge_norm`; not SLiC-HF's objective (see `slic_hf`).
  """
  z = beta * log_ratio_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                              reference_rejected_logps)
  return jax.nn.relu(1 - z)


def ipo(policy_chosen_logps: Array, policy_rejected_logps: Array, reference_chosen_logps: Array,
        reference_rejected_logps: Array, *, tau: float = 0.1, length_normalize: bool = True,
        chosen_lengths: Array | None = None, rejected_lengths: Array | None = None) -> Array:
  """IPO (§2): `(h − 1/(2τ))²`.

  `length_normalize=True` (default) uses per-token averaged log-ratios `ρ_w/n_w − ρ_l/n_l` (TRL offline
  DPOTrainer / CPOTrainer since PR #1265, the IPO authors' guidance) and needs `chosen_lengths`,
  `rejected_lengths` (completion token counts). `False` uses summed log-probs: the paper's formula, the
  official DPO repo and TRL OnlineDPO. τ's scale differs by orders of magnitude between the two.
  """
  if length_normalize:
    n_w = _require(chosen_lengths, "chosen_lengths", "ipo")
    n_l = _require(rejected_lengths, "rejected_lengths", "ipo")
    h = (_average(policy_chosen_logps - reference_chosen_logps, n_w)
         - _average(policy_rejected_logps - reference_rejected_logps, n_l))
  else:
    h = log_ratio_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                         reference_rejected_logps)
  return jnp.square(h - 1 / (2 * tau))


def slic_hf(policy_chosen_logps: Array, policy_rejected_logps: Array, reference_chosen_logps: Array,
            reference_rejected_logps: Array, *, delta: float = 1.0, lam: float = 0.5,
            chosen_nll: Array | None = None) -> Array:
  """SLiC-HF (§8.1): `max(0, δ − S_θ(y⁺) + S_θ(y⁻)) + λ·NLL`.

  The hinge is on RAW policy sequence log-likelihoods (reference arguments are unused; the trainer may
  pass zeros). `chosen_nll` is the summed sequence NLL `−log π_θ(y_ref|x)` of the SFT target; by default
  the target is the chosen completion, i.e. `−policy_chosen_logps`.
  """
  del reference_chosen_logps, reference_rejected_logps  # SLiC calibrates the policy alone
  loss = jax.nn.relu(delta - policy_chosen_logps + policy_rejected_logps)
  nll = -policy_chosen_logps if chosen_nll is None else chosen_nll
  return loss + lam * jnp.asarray(nll, loss.dtype)


def log1mexp(a: Array) -> Array:
  """`log(1 − eᵃ)` for a < 0, stable on both sides of −ln2 (§0.3, TRL's branch point).

  `a` is clamped strictly below 0: a sequence of probability 1 (a = 0) would give −inf and NaN gradients.
  """
  a = jnp.minimum(a, -jnp.finfo(jnp.result_type(a)).eps)
  return jnp.where(a < -_LN2, jnp.log1p(-jnp.exp(a)), jnp.log(-jnp.expm1(a)))


def orpo(policy_chosen_logps: Array, policy_rejected_logps: Array, reference_chosen_logps: Array,
         reference_rejected_logps: Array, *, lam: float = 0.1, chosen_lengths: Array | None = None,
         rejected_lengths: Array | None = None, chosen_nll: Array | None = None) -> Array:
  """ORPO (§8.3), reference-free: `NLL(y_w) − λ log σ(log odds(y_w) − log odds(y_l))`.

  Odds use length-averaged log-probs `A = S/n` (needs `chosen_lengths`, `rejected_lengths`),
  `log odds = A − log(1 − eᴬ)`. `chosen_nll` is the token-MEAN NLL of the chosen sequence; by default the
  response's, `−A_w` (the paper's reading; TRL averages over prompt+response). λ is TRL's `beta`.
  The reference arguments are ignored: pass zeros and skip the reference forward pass.
  """
  del reference_chosen_logps, reference_rejected_logps
  a_w = _average(policy_chosen_logps, _require(chosen_lengths, "chosen_lengths", "orpo"))
  a_l = _average(policy_rejected_logps, _require(rejected_lengths, "rejected_lengths", "orpo"))
  nll = -a_w if chosen_nll is None else jnp.asarray(chosen_nll, a_w.dtype)
  log_odds = (a_w - log1mexp(a_w)) - (a_l - log1mexp(a_l))
  return nll + lam * jax.nn.softplus(-log_odds)


def simpo(policy_chosen_logps: Array, policy_rejected_logps: Array, reference_chosen_logps: Array,
          reference_rejected_logps: Array, *, beta: float = 2.5, gamma: float = 1.375,
          chosen_lengths: Array | None = None, rejected_lengths: Array | None = None) -> Array:
  """SimPO (§8.4), reference-free: `−log σ(β·S_w/|y_w| − β·S_l/|y_l| − γ)`.

  Defaults are the paper setting quoted by TRL's index (β=2.5, γ=1.375), not TRL CPOConfig's generic ones.
  Needs `chosen_lengths`, `rejected_lengths`; the reference arguments are ignored (pass zeros).
  """
  del reference_chosen_logps, reference_rejected_logps
  a_w = _average(policy_chosen_logps, _require(chosen_lengths, "chosen_lengths", "simpo"))
  a_l = _average(policy_rejected_logps, _require(rejected_lengths, "rejected_lengths", "simpo"))
  return jax.nn.softplus(-(beta * (a_w - a_l) - gamma))


def bco_pair_reward_mean(policy_chosen_logps: Array, policy_rejected_logps: Array,
                         reference_chosen_logps: Array, reference_rejected_logps: Array, *,
                         beta: float = 0.1) -> Array:
  """The scalar TRL ≤ v0.28 pushes into its running mean each step: mean of `[β ρ_w; β ρ_l]` (detached).

  Usage (§3.3): `state = running_mean_update(state, bco_pair_reward_mean(...))`, then
  `bco_pair(..., delta=state[0])` — δ includes the current batch, and each batch has weight 1.
  """
  r = beta * jnp.concatenate([policy_chosen_logps - reference_chosen_logps,
                              policy_rejected_logps - reference_rejected_logps])
  return jax.lax.stop_gradient(jnp.mean(r))


def bco_pair(policy_chosen_logps: Array, policy_rejected_logps: Array, reference_chosen_logps: Array,
             reference_rejected_logps: Array, *, beta: float = 0.1, delta: Array | float | None = None) -> Array:
  """Paired BCO (§3.3, TRL ≤ v0.28 semantics): `−log σ(β ρ_w − δ) − log σ(−(β ρ_l − δ))`.

  `delta` is the reward shift in reward units, supplied by the trainer from the running mean of per-batch
  mean rewards (`bco_pair_reward_mean` + `running_mean_update`); it gets no gradient. `delta=0.0`
  reproduces TRL ≥ v0.29, which dropped the shift.
  """
  r_w = beta * (policy_chosen_logps - reference_chosen_logps)
  r_l = beta * (policy_rejected_logps - reference_rejected_logps)
  d = jax.lax.stop_gradient(jnp.asarray(_require(delta, "delta", "bco_pair"), r_w.dtype))
  return jax.nn.softplus(-(r_w - d)) + jax.nn.softplus(r_l - d)



RPO_REDUCTIONS = ("seq_sum", "seq_mean", "token_pool")


def rpo(policy_chosen_logps: Array, policy_rejected_logps: Array, reference_chosen_logps: Array,
        reference_rejected_logps: Array, *, beta: float = 0.1, eta: float = 0.005, sft_reduction: str = "seq_sum",
        chosen_lengths: Array | None = None, rejected_lengths: Array | None = None) -> Array:
  """RPO (§8.8, Liu et al. 2024 Eq. 4.8): DPO + an NLL term on the chosen completion.

  `sft_reduction`: `seq_sum` (the paper and its authors' code: `η·β·(−S_θ(y_w))`, S summed), `seq_mean`
  (OpenRLHF: `η·(−S_θ(y_w)/|y_w|)`), `token_pool` (TRL: `η·(−Σ_b S_θ(y_w)/Σ_b |y_w|)` pooled over the batch
  the function sees; with gradient accumulation, over each microbatch). Per-pair values whose mean is the loss.
  """
  if sft_reduction not in RPO_REDUCTIONS:
    raise ValueError(f"loss 'rpo': sft_reduction must be one of {RPO_REDUCTIONS}, got {sft_reduction!r}")
  h = log_ratio_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
  nll = -policy_chosen_logps
  if sft_reduction == "seq_sum":
    sft = eta * beta * nll
  else:
    n = _require(chosen_lengths, "chosen_lengths", "rpo")
    sft = (eta * _average(nll, n) if sft_reduction == "seq_mean"
           else eta * nll * nll.shape[0] / jnp.maximum(jnp.sum(jnp.asarray(n, nll.dtype)), 1))
  return jax.nn.softplus(-beta * h) + sft


def ld_dpo(policy_chosen_logps: Array, policy_rejected_logps: Array, reference_chosen_logps: Array,
           reference_rejected_logps: Array, *, beta: float = 0.1, alpha: float = 0.5,
           desensitize_reference: bool = True, policy_chosen_tail: Array | None = None,
           policy_rejected_tail: Array | None = None, reference_chosen_tail: Array | None = None,
           reference_rejected_tail: Array | None = None) -> Array:
  """LD-DPO (§8.9): DPO on `Ŝ = Σ_{t ≤ l_p} ℓ_t + α Σ_{t > l_p} ℓ_t`, `l_p = min(|y_w|, |y_l|)`.

  The `*_tail` arrays are `Σ_{t > l_p} ℓ_t` of each side (zero for the shorter one), so `Ŝ = S − (1 − α)·tail`.
  α = 1 is DPO. `desensitize_reference`: the reference gets the same treatment (TRL ≥ 0.29; default) or not
  (TRL 0.18–0.28, policy only); the paper does not say (UNVERIFIED).
  """
  name = "ld_dpo"
  hat = lambda s, t, arg: s - (1 - alpha) * _require(t, arg, name)
  pc = hat(policy_chosen_logps, policy_chosen_tail, "policy_chosen_tail")
  pr = hat(policy_rejected_logps, policy_rejected_tail, "policy_rejected_tail")
  rc, rr = reference_chosen_logps, reference_rejected_logps
  if desensitize_reference:
    rc = hat(rc, reference_chosen_tail, "reference_chosen_tail")
    rr = hat(rr, reference_rejected_tail, "reference_rejected_tail")
  return jax.nn.softplus(-beta * log_ratio_margin(pc, pr, rc, rr))


def common_length_tails(token_logps: Array, chosen_mask: Array, rejected_mask: Array) -> tuple[Array, Array]:
  """`Σ_{t > l_p} ℓ_t` of chosen and rejected (`[B]` each) from `token_logps` `[2B, C]` (chosen rows first, as in
  the trainer's forward pass), `l_p` = the shorter completion's token count of each pair."""
  b = chosen_mask.shape[0]
  lc, lr = chosen_mask.sum(-1), rejected_mask.sum(-1)
  lp = jnp.minimum(lc, lr)[:, None]
  pos = jnp.arange(chosen_mask.shape[-1])[None, :]
  beyond = lambda lp_tok, m: jnp.sum(jnp.where((pos >= lp) & (m > 0), lp_tok, 0), axis=-1)
  return beyond(token_logps[:b], chosen_mask), beyond(token_logps[b:], rejected_mask)
