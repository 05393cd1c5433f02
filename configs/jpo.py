"""JPO (Bansal et al. 2024, arXiv 2404.00530): DPO on joint log-probs of instruction–response pairs (§8.14).

  python -m jaxalign.main --config=configs/jpo.py --workdir=runs/jpo

Same set-up as configs/dpo.py, except that half of the built-in pairs (`data.joint_fraction`) compare two
(prompt, response) pairs with different prompts (the winner drawn Bradley–Terry on their true rewards) and the
prompt tokens are scored: `J = log π(x) + log π(y|x)`. With one shared prompt JPO is exactly DPO. Your own data:
JSONL rows `{"chosen_prompt", "chosen", "rejected_prompt", "rejected"}` (ordinary `{"prompt", ...}` rows may be
mixed in). Measured (3 seeds): eval/win_rate 0.810 ± 0.014 at KL 4.5 (DPO 0.817 ± 0.026).
See the README's method table. Variant `:tiny` for smoke runs.
"""

from jaxalign.config import offline_config

def get_config(variant: str = ""):
  c = offline_config(dict(name="jpo", beta=0.1), variant)
  c.data.joint_fraction = 0.5  # built-in pairs re-paired across prompts
  return c
