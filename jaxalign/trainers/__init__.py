"""The trainers, by `config.trainer` name: `TRAINERS[name] = (module, train function)`.

Every trainer module has `train(config, workdir)` entry points and `check(config)`, which
validates the trainer's own config section (`jaxalign.config.validate` checks the shared
ones). Modules are imported on first use, so `import jaxalign.trainers` loads none of them.
"""

from __future__ import annotations

import importlib

TRAINERS: dict[str, tuple[str, str]] = {
    "sft": ("sft", "train"),
    "offline": ("offline", "train"),
    "unpaired": ("unpaired", "train"),
    "reward_model": ("reward", "train_reward_model"),
    "preference_model": ("reward", "train_preference_model"),
    "online": ("online", "train"),
    "ppo": ("ppo", "train"),
    "token_discriminator": ("discriminator", "train"),
    "rlthf": ("rlthf", "train"),
    "disco": ("policy_gradient", "train"),
    "f_dpg": ("policy_gradient", "train"),
}


def _module(name: str):
  from jaxalign.errors import UserError
  if name not in TRAINERS:
    raise UserError(f"config trainer: {name!r} is not one of {', '.join(TRAINERS)}")
  return importlib.import_module(f"jaxalign.trainers.{TRAINERS[name][0]}")


def check(config) -> None:
  """The trainer's own validation of its config section (one-line `UserError`s)."""
  _module(config.trainer).check(config)


def train(config, workdir: str):
  """Runs the trainer named by `config.trainer` on `workdir`, which this run holds (`jaxalign.workdir`)
  while it trains; returns what the trainer returns (final params)."""
  import jax
  from jaxalign import workdir as wd
  fn = getattr(_module(config.trainer), TRAINERS[config.trainer][1])
  if jax.process_index() != 0:  # process 0 holds the run directory for all of them
    return fn(config, workdir)
  wd.hold(workdir)
  try:
    return fn(config, workdir)
  finally:
    wd.release(workdir)
