"""BPO (Xu et al. 2024, algorithms.md §8.12): online DAP whose reference is the behaviour model that sampled the pairs.

  python -m jaxalign.main --config=configs/bpo.py --workdir=runs/bpo

SFT reference in WORKDIR/sft (trained on first use), then 150 steps of online DPO (trainer "online", method
ipo_md, `online.loss=dpo`, β = 0.1): each step the behaviour model π_β samples two completions for each of 64
prompts, the ground-truth judge annotates P = σ(r(y) − r(y')), and the DPO loss −P·log σ(βh) − (1 − P)·log σ(−βh)
is taken with π_β as the reference: h = log π_θ/π_β (y) − log π_θ/π_β (y'). π_β starts as the SFT model and is
refreshed from the policy every `online.behavior_update_every` = 10 steps (15 annotation phases); it is part of the
train state, checkpointed. `--config.online.behavior_ema=0.5`: an EMA instead of a copy (the authors' stabiliser is
an average of LoRA adapters; see the README). `--config.online.loss=ipo`: BPO with IPO. Evaluation (win rate, KL)
is against the SFT reference, as for every method. Variant `:tiny` for smoke runs.
"""

from jaxalign.config import online_config

RESULT = "eval/win_rate 0.993 ± 0.003 at eval/kl 5.99 (3 seeds; online DPO with the fixed reference 0.990 ± 0.009 at 4.86)"


def get_config(variant: str = ""):
  return online_config(
      variant,
      method="ipo_md",
      mixture_coef=0.0,
      loss="dpo",
      beta=0.1,
      target="soft",
      reference="behavior",
      behavior_update_every=10,
      behavior_ema=0.0,
  )
