"""Losses as pure functions on arrays; `LOSSES` maps a config name to a function.

Pairwise preference losses take `policy_chosen_logps, policy_rejected_logps,
reference_chosen_logps, reference_rejected_logps` (`[B]`, summed completion
log-probs) and keyword-only hyper-parameters, and return per-pair losses `[B]`.
Some also take extra keyword-only ARRAYS (default None) that the trainer must supply: `EXTRA_INPUTS`
names them per loss. Losses in `REFERENCE_FREE` ignore the reference log-probs: the trainer passes zeros
and can skip the reference forward pass. Unpaired losses (BCO, KTO) are exported but not in `LOSSES`.
"""

import inspect

from jaxalign.errors import UserError
from jaxalign.losses.dpo import dpo, log_ratio_margin, preference_metrics
from jaxalign.losses.listwise import (LISTWISE, SELF_SAMPLED, d2o, lipo, list_mle, listwise_metrics, pair_logistic,
                                      self_sampled_metrics, softmax_listnet)
from jaxalign.losses.pairwise import (bco_pair, bco_pair_reward_mean, cdpo, common_length_tails, hinge, ipo,
                                      ld_dpo, log1mexp, orpo, robust, rpo, simpo, slic_hf)
from jaxalign.losses.unpaired import (bco_loss, class_balanced_delta, class_balanced_init, class_balanced_update,
                                      kto_kl_baseline, kto_loss, running_mean_init, running_mean_update,
                                      udm_weights)

LOSSES = {
    "dpo": dpo,
    "cdpo": cdpo,
    "robust": robust,
    "hinge": hinge,
    "hinge_norm": hinge,  # RSO's hinge-norm is exactly TRL's `hinge` (algorithms.md §8.1)
    "ipo": ipo,
    "slic_hf": slic_hf,
    "orpo": orpo,
    "simpo": simpo,
    "bco_pair": bco_pair,
    "rpo": rpo,
    "ld_dpo": ld_dpo,
    "jpo": dpo,  # DPO on joint log-probs log π(x) + log π(y|x): the data path scores the prompts (§8.14)
}

# Keyword-only array arguments the trainer must pass per loss (not config hyper-parameters).
# ipo needs its lengths only with length_normalize=True; chosen_nll is optional (derived);
# bco_pair's delta is the running mean of `bco_pair_reward_mean` (see `running_mean_update`).
EXTRA_INPUTS = {
    "ipo": ("chosen_lengths", "rejected_lengths"),
    "slic_hf": ("chosen_nll",),  # optional: defaults to the chosen completion's summed NLL
    "orpo": ("chosen_lengths", "rejected_lengths", "chosen_nll"),  # chosen_nll optional (response mean)
    "simpo": ("chosen_lengths", "rejected_lengths"),
    "bco_pair": ("delta",),
    "rpo": ("chosen_lengths", "rejected_lengths"),  # used by sft_reduction seq_mean / token_pool
    "ld_dpo": ("policy_chosen_tail", "policy_rejected_tail", "reference_chosen_tail", "reference_rejected_tail"),
}

# The reference arguments are ignored: pass zeros and skip the reference forward pass.
REFERENCE_FREE = {"simpo", "orpo"}


# Hyper-parameters that take one of a few strings: checked with the others, one line when wrong.
CHOICES = {
    ("rpo", "sft_reduction"): ("seq_sum", "seq_mean", "token_pool"),
    ("lipo", "discount_base"): ("e", "2"),
    ("lipo", "reduction"): ("list_sum", "pair_mean"),
    ("pair_logistic", "reduction"): ("list_sum", "pair_mean"),
}


def _check_hparams(name: str, fn, hparams: dict, arrays: set) -> None:
  accepted = {p.name for p in inspect.signature(fn).parameters.values()
              if p.kind == p.KEYWORD_ONLY and p.name not in arrays}
  unknown = sorted(set(hparams) - accepted)
  if unknown:
    raise UserError(f"config loss.{unknown[0]}: not a hyper-parameter of loss {name!r} "
                    f"(accepted: {sorted(accepted)})")
  for key, value in hparams.items():
    allowed = CHOICES.get((name, key))
    if allowed and value not in allowed:
      raise UserError(f"config loss.{key}: {value!r} is not one of {', '.join(allowed)} (loss {name!r})")


def get_loss(name: str, hparams: dict):
  """Returns `(fn, kwargs)` after checking the name and that every hyper-parameter is accepted."""
  if name not in LOSSES:
    hint = f"; {name!r} is a listwise loss (lists of completions)" if name in LISTWISE else ""
    raise UserError(f"config loss.name: unknown loss {name!r}; choose from "
                    f"{sorted(LOSSES) + sorted(LISTWISE) + sorted(SELF_SAMPLED)}{hint}")
  fn = LOSSES[name]
  _check_hparams(name, fn, hparams, set(EXTRA_INPUTS.get(name, ())))  # arrays come from the trainer
  return fn, dict(hparams)


def get_listwise(name: str, hparams: dict):
  """`(fn, kwargs)` of a `LISTWISE` loss (K completions per prompt) or a `SELF_SAMPLED` one (D²O), checked as
  `get_loss` checks."""
  table = {**LISTWISE, **SELF_SAMPLED}
  if name not in table:
    raise UserError(f"config loss.name: {name!r} is not a listwise loss; choose from {sorted(table)}")
  fn = table[name]
  _check_hparams(name, fn, hparams, set())
  return fn, dict(hparams)


def data_kind(name: str) -> str:
  """What the offline trainer feeds a loss: `lists` (LISTWISE), `negatives` (D²O: human negatives, with
  completions the trainer samples), `joint` (JPO's instruction–response pairs) or `pairs`."""
  if name in LISTWISE:
    return "lists"
  return "negatives" if name in SELF_SAMPLED else "joint" if name == "jpo" else "pairs"


__all__ = [
    "LOSSES", "EXTRA_INPUTS", "REFERENCE_FREE", "get_loss", "dpo", "log_ratio_margin", "preference_metrics",
    "cdpo", "robust", "hinge", "ipo", "slic_hf", "orpo", "simpo", "bco_pair", "bco_pair_reward_mean", "log1mexp",
    "bco_loss", "kto_loss", "kto_kl_baseline", "running_mean_init", "running_mean_update", "class_balanced_init",
    "class_balanced_update", "class_balanced_delta", "udm_weights", "rpo", "ld_dpo", "common_length_tails",
    "LISTWISE", "SELF_SAMPLED", "get_listwise", "data_kind", "lipo", "pair_logistic", "list_mle", "softmax_listnet", "listwise_metrics", "d2o", "self_sampled_metrics",
]

# Online preference losses (online IPO / IPO-MD, Nash-MD-PG); used by jaxalign.trainers.online.
from jaxalign.losses.online import (geometric_mixture_logprobs, ipo_target, nash_md_pg, online_ipo,  # noqa: E402
                                    reward_to_go, sequence_kl)
__all__ += ["geometric_mixture_logprobs", "ipo_target", "nash_md_pg", "online_ipo", "reward_to_go", "sequence_kl"]

# The seeds' RL methods (BPO's online DPO, DisCO, f-DPG, DR-PO's resets); used by the online, ppo and
# policy_gradient trainers.
from jaxalign.losses.rl import (batch_log_z, disco_objective, disco_penalty, disco_scores, draw_resets,  # noqa: E402
                                f_divergence_value, f_dpg_weights, f_prime, online_dpo, reset_probs, running_log_z,
                                token_kl)
__all__ += ["batch_log_z", "disco_objective", "disco_penalty", "disco_scores", "draw_resets", "f_divergence_value",
            "f_dpg_weights", "f_prime", "online_dpo", "reset_probs", "running_log_z", "token_kl"]
