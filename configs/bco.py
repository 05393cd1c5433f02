"""BCO on unpaired thumbs-up / thumbs-down feedback (Jung et al. 2024; algorithms.md §3).

  python -m jaxalign.main --config=configs/bco.py --workdir=runs/bco

SFT reference in WORKDIR/sft, then 150 steps of 128 rows on the built-in task's 8192 binary-feedback
rows (each completion labelled thumbs-up if it beats a fresh sample of the same prompt). The reward
shift δ is the running mean of all implicit rewards (TRL), logged as train/delta.
Options:
  --config.loss.delta_estimator=class_balanced   δ = midpoint of the two classes' running means
  --config.udm.enabled=True                      density-ratio weights on thumbs-down rows (UDM)
  --config.data.split_families=True              up/down prompts from different prompt families
  --config.data.feedback=pairs                   rows made from the preference pairs (chosen up, rejected down)
Real data: --config.data.source=jsonl --config.data.path=feedback.jsonl ({"prompt", "completion",
"label": true|false} per line) --config.data.tokenizer=sp.model --config.init_from=SFT_RUN_DIR.
Variant `:tiny` for smoke runs. See the README's method table for the measured result.
"""

from jaxalign.config import unpaired_config

def get_config(variant: str = ""):
  return unpaired_config(dict(
      name="bco",
      beta=0.1,
      delta_estimator="running_mean",  # running_mean (TRL) | class_balanced
  ), variant, learning_rate=3e-4)  # at DPO's 1e-3 BCO over-optimises the noisier binary labels (valid 0.70)
