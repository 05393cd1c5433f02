"""optax optimiser and learning-rate schedule from `config.train`."""

from __future__ import annotations

import optax

from jaxalign.errors import UserError


def schedule(train_cfg) -> optax.Schedule:
  lr, steps = float(train_cfg.learning_rate), int(train_cfg.steps)
  warmup = min(int(train_cfg.warmup_steps), steps)
  kind = train_cfg.schedule
  if kind == "constant":
    decay = optax.constant_schedule(lr)
  elif kind == "cosine":
    decay = optax.cosine_decay_schedule(lr, max(steps - warmup, 1), alpha=0.0)
  elif kind == "linear":
    decay = optax.linear_schedule(lr, 0.0, max(steps - warmup, 1))
  else:
    raise UserError(f"config train.schedule: unknown schedule {kind!r} (constant | cosine | linear)")
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def make_optimizer(train_cfg) -> optax.GradientTransformation:
  parts = []
  if train_cfg.max_grad_norm and train_cfg.max_grad_norm > 0:
    parts.append(optax.clip_by_global_norm(float(train_cfg.max_grad_norm)))
  sched = schedule(train_cfg)
  name = train_cfg.optimizer
  if name == "adamw":
    parts.append(optax.adamw(sched, b1=train_cfg.b1, b2=train_cfg.b2, eps=1e-8,
                             weight_decay=float(train_cfg.weight_decay)))
  elif name == "rmsprop":  # the DPO paper's choice
    parts.append(optax.rmsprop(sched, decay=train_cfg.b2))
  elif name == "sgd":
    parts.append(optax.sgd(sched))
  else:
    raise UserError(f"config train.optimizer: unknown optimizer {name!r} (adamw | rmsprop | sgd)")
  return optax.chain(*parts)
