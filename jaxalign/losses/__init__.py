"""Losses as pure functions on arrays; `LOSSES` maps a config name to a function.

Pairwise preference losses take `policy_chosen_logps, policy_rejected_logps,
reference_chosen_logps, reference_rejected_logps` (`[B]`, summed completion
log-probs) and keyword-only hyper-parameters, and return per-pair losses `[B]`.
"""

import inspect

from jaxalign.errors import UserError
from jaxalign.losses.dpo import dpo, log_ratio_margin, preference_metrics

LOSSES = {
    "dpo": dpo,
}


def get_loss(name: str, hparams: dict):
  """Returns `(fn, kwargs)` after checking the name and that every hyper-parameter is accepted."""
  if name not in LOSSES:
    raise UserError(f"config loss.name: unknown loss {name!r}; choose from {sorted(LOSSES)}")
  fn = LOSSES[name]
  accepted = {p.name for p in inspect.signature(fn).parameters.values() if p.kind == p.KEYWORD_ONLY}
  unknown = sorted(set(hparams) - accepted)
  if unknown:
    raise UserError(f"config loss.{unknown[0]}: not a hyper-parameter of loss {name!r} "
                    f"(accepted: {sorted(accepted)})")
  return fn, dict(hparams)


__all__ = ["LOSSES", "get_loss", "dpo", "log_ratio_margin", "preference_metrics"]
