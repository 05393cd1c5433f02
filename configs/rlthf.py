"""RLTHF (Xu et al. 2025, arXiv 2502.13417): targeted human relabelling of AI-labelled pairs (algorithms.md §8.13).

  python -m jaxalign.rlthf --config=configs/rlthf.py --workdir=runs/rlthf [--config.rlthf.budget=0.1]

On the built-in task: 4096 pairs labelled by a noisy "AI" annotator (Bradley–Terry draws on the true reward,
the DPO default's labels), the ground truth playing the human. Two rounds of: reward model on the current
labels → margins → the lowest-margin pairs no human has seen go to the human (budget / 2 of all pairs per round,
answers weighted ×2 in the next reward model) → a last reward model labels the rest → DPO (β = 0.1, 150 steps)
on the final labels, evaluated like every built-in run. metrics.jsonl: label accuracy per round, the final label
accuracy, the DPO run's eval/*. Your own pairs: --config.data.source=jsonl --config.data.path=FILE; each round
writes WORKDIR/round<t>/to_annotate.jsonl and waits for annotated.jsonl. Measured (1 seed): with 5% of the pairs re-annotated the labels'
accuracy rises from 0.835 to 0.888 and DPO's win rate from 0.820 to 0.909; see the README (RLTHF) for the curve. Variant `:tiny` for smoke runs.
"""

from jaxalign.config import apply_variant, offline_config


def get_config(variant: str = ""):
  c = offline_config(dict(name="dpo", beta=0.1), "")
  c.trainer = "rlthf"
  c.rlthf.budget = 0.1
  c.rlthf.iterations = 2
  if variant == "tiny":
    c.rlthf.rm_steps, c.rlthf.rm_batch_size, c.rlthf.rm_eval_pairs = 6, 16, 16
  apply_variant(c, variant)
  return c
