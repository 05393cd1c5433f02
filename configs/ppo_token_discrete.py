"""PPO with discrete token rewards from the TLCR discriminator (the paper's discrete-token baseline, §6.5).

  python -m jaxalign.main --config=configs/ppo_token_discrete.py --workdir=runs/ppo_token_discrete

Everything as configs/tlcr.py (SFT → revisions → discriminator → PPO, each stage reused from the
workdir), except the token reward: +1 when D ≥ 0.6, −1 when D ≤ 0.4, else 0 (`tlcr.low`, `tlcr.high`,
`tlcr.positive`, `tlcr.negative`). A discriminator trained by a configs/tlcr.py run can be shared:
--config.tlcr.discriminator_path=runs/tlcr/discriminator. Variant `:tiny` for smoke runs.
"""

from configs import tlcr

RESULT = "see the README's TLCR section"


def get_config(variant: str = ""):
  return tlcr.get_config(variant, token_reward="discrete")
