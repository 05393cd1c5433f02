"""UDM: underlying distribution matching for BCO (algorithms.md §3.4).

When thumbs-up and thumbs-down prompts come from different distributions, BCO reweights each
thumbs-down row by the density ratio `p₊(x)/p₋(x)`, estimated with a class-balanced logistic-regression
classifier on frozen prompt embeddings (here the reference model's mean final hidden state over the
prompt tokens): `w = clip(p/(1−p), min, max)` with `p = P(D+ | x)`.

Everything here is deterministic given (data, reference params, seed): prompts are sampled with
replacement from each class (TRL's `prompt_sample_size`), embeddings are standardised, and the
classifier is fitted by full-batch L-BFGS in JAX.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxalign.losses import udm_weights
from jaxalign.models.transformer import Transformer, positions_from_mask
from jaxalign.inference import map_rows

Array = jax.Array


def prompt_embeddings(cfg, params, prompt_BxP: Array, prompt_mask_BxP: Array) -> Array:
  """Mean final hidden state over the real prompt tokens, `[B, D]` float32."""
  mask = prompt_mask_BxP.astype(jnp.int32)
  hidden, _ = Transformer(cfg).apply({"params": params}, prompt_BxP, positions_from_mask(mask), mask)
  m = mask[..., None].astype(jnp.float32)
  return jnp.sum(hidden.astype(jnp.float32) * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)


def fit_classifier(x_pos: Array, x_neg: Array, *, steps: int = 300, l2: float = 1e-3) -> dict:
  """Class-balanced logistic regression `P(D+ | x)` on standardised features.

  Loss: `½·mean₊ softplus(−f) + ½·mean₋ softplus(f) + ½·l2·|w|²` (each class weighted by half, as
  sklearn's `class_weight="balanced"`, so the odds estimate `p₊(x)/p₋(x)` without the class prior).
  Returns `{mu, sigma, w, b}` (all arrays: a pytree that checkpoints with the train state).
  """
  x_pos = jnp.asarray(x_pos, jnp.float32)
  x_neg = jnp.asarray(x_neg, jnp.float32)
  x = jnp.concatenate([x_pos, x_neg])
  mu = jnp.mean(x, axis=0)
  sigma = jnp.std(x, axis=0) + 1e-6
  z_pos, z_neg = (x_pos - mu) / sigma, (x_neg - mu) / sigma

  def objective(p):
    f_pos = z_pos @ p["w"] + p["b"]
    f_neg = z_neg @ p["w"] + p["b"]
    return (0.5 * jnp.mean(jax.nn.softplus(-f_pos)) + 0.5 * jnp.mean(jax.nn.softplus(f_neg))
            + 0.5 * l2 * jnp.sum(jnp.square(p["w"])))

  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(objective)

  @jax.jit
  def run(p0):
    def body(carry, _):
      p, state = carry
      value, grad = value_and_grad(p, state=state)
      updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=objective)
      return (optax.apply_updates(p, updates), state), value
    (p, _), values = jax.lax.scan(body, (p0, opt.init(p0)), None, length=steps)
    return p, values

  p0 = {"w": jnp.zeros(x.shape[1], jnp.float32), "b": jnp.zeros((), jnp.float32)}
  p, _ = run(p0)
  return {"mu": mu, "sigma": sigma, "w": p["w"], "b": p["b"]}


def prob_desirable(clf: dict, x: Array) -> Array:
  """`P(D+ | x)` under the fitted classifier."""
  z = (jnp.asarray(x, jnp.float32) - clf["mu"]) / clf["sigma"]
  return jax.nn.sigmoid(z @ clf["w"] + clf["b"])


def fit_udm(cfg, ref_params, arrays: dict, mesh, udm_cfg, *, seed: int, batch_size: int):
  """Fits the classifier on this dataset and returns `(classifier, weights[N], stats)`.

  `weights` is 1 on thumbs-up rows and the clipped density ratio on thumbs-down rows.
  """
  (emb,), _ = map_rows(lambda p, b: prompt_embeddings(cfg, p, b["prompt"], b["prompt_mask"]), ref_params,
                       {k: arrays[k] for k in ("prompt", "prompt_mask")}, mesh, batch_size=batch_size,
                       desc="UDM prompt embeddings")
  label = arrays["label"].astype(bool)
  rng = np.random.default_rng([seed, 0x0D3])
  k = int(udm_cfg.prompt_sample_size)
  pos = rng.choice(np.flatnonzero(label), size=k, replace=True)  # with replacement, as TRL
  neg = rng.choice(np.flatnonzero(~label), size=k, replace=True)
  clf = fit_classifier(emb[pos], emb[neg], steps=int(udm_cfg.steps), l2=float(udm_cfg.l2))
  p = np.asarray(prob_desirable(clf, emb))
  w = np.asarray(udm_weights(p, label, (float(udm_cfg.min_density_ratio), float(udm_cfg.max_density_ratio))))
  pred = p >= 0.5
  stats = {"udm/classifier_accuracy": float(0.5 * (pred[label].mean() + (~pred[~label]).mean())),
           "udm/mean_weight_thumbs_down": float(w[~label].mean())}
  return jax.device_get(clf), w.astype(np.float32), stats
