"""TLCR's token discriminator (Yoon et al. 2024, algorithms.md §6.1–6.2) on the built-in task.

  python -m jaxalign.main --config=configs/tlcr_discriminator.py --workdir=runs/tlcr_disc

On first use it trains (or reuses) the SFT model in WORKDIR/sft, which also initialises the
discriminator's trunk. The built-in task revises 40% of its rejected completions (`tlcr.revise_frac`)
as an imperfect editor would (`tlcr.revision_noise` = 0.1: missed and unneeded edits); token labels
come from aligning each rejected completion with its revision. The discriminator (trunk + 2-class
head without bias) trains with soft targets: edited rejected tokens → negative, edited revised tokens
→ positive, unchanged tokens → ½. Your own revisions: --config.data.source=jsonl
--config.data.path=revisions.jsonl with rows {"prompt", "chosen", "rejected", "revised"}.

Logs train/token_accuracy, train/p_{positive,negative,unchanged}; eval/token_accuracy on held-out
rows and eval/sign_agreement: on SFT samples of the held-out prompts, how often sign(D − ½) agrees
with the ground truth's per-token sentiment attribution (over the sentiment-bearing tokens).
Expected (seed 0, 2 CPU cores, ≈ 4 min with the SFT stage): see RESULT.
Variant `:tiny` for smoke runs (random init, a few steps).
"""

from jaxalign.config import apply_variant, base_config

RESULT = "see the README's TLCR section"


def get_config(variant: str = ""):
  c = base_config()
  c.trainer = "token_discriminator"
  c.init_from = "auto"  # the SFT model in WORKDIR/sft, trained on first use
  c.data.num_examples = 8192  # preference pairs drawn; revise_frac of them are revised
  c.train.steps = 300
  c.train.batch_size = 64
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 10
  c.train.checkpoint_every = 100
  c.eval.every = 100
  c.eval.samples_per_prompt = 4
  c.tlcr.revise_frac = 0.4
  c.tlcr.revision_noise = 0.1
  c.tlcr.eval_pairs = 256
  c.tlcr.hard_label = False
  apply_variant(c, variant)
  if variant == "tiny":
    c.data.num_examples = 256
    c.train.steps, c.train.batch_size = 6, 16
    c.train.checkpoint_every, c.eval.every = 3, 3
    c.tlcr.eval_pairs = 32
    c.eval.samples_per_prompt = 1
  c.lock()
  return c
