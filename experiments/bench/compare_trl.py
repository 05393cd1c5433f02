"""The same DPO workload through TRL's DPOTrainer and jaxalign, alternately, in one invocation.

  pip install -e .[bench]        # torch (CPU), transformers, trl: only for this script
  python experiments/bench/compare_trl.py --preset tiny --batch_pairs 8 --rounds 2
  python experiments/bench/compare_trl.py --preset tiny --batch_pairs 8 --variable_lengths --packing

Each run is its own process (so peak RSS is per run): TRL, then jaxalign, `--rounds` times.
Both sides get the same random-init Llama shapes (the jaxalign preset), the same token
batches in the same order (`dpo.py`'s `random_batch`, same seed), float32 (or `--bf16` on both sides), the sigmoid DPO
loss, AdamW, and the reference forward in the step unless `--precompute_ref`. TRL keeps its
defaults (gradient checkpointing on, as its DPOConfig sets) unless `--trl_no_checkpointing`. TRL pads each
batch to its longest row (its collator); jaxalign pads to `P + C` or packs (`--packing`).
Tokens are the real ones (prompt counted in both rows of a pair), as `dpo.py` counts them.
Prints one JSON object: per-side medians over rounds and the jaxalign / TRL ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", ".."))

from _common import add_workload_args, alternate, cpu_seconds, workload_flags  # noqa: E402


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_workload_args(p)
  p.add_argument("--variable_lengths", action="store_true")
  p.add_argument("--precompute_ref", action="store_true")
  p.add_argument("--packing", action="store_true", help="jaxalign side packs sequences (train.packing)")
  p.add_argument("--rounds", type=int, default=1, help="TRL, jaxalign alternations")
  p.add_argument("--bf16", action="store_true",
                 help="both sides compute in bfloat16 with float32 master weights (TRL: Trainer bf16=True; "
                      "jaxalign: dpo.py --dtype bfloat16)")
  p.add_argument("--trl_no_checkpointing", action="store_true",
                 help="TRL side without gradient checkpointing (TRL's DPOConfig turns it on by default)")
  p.add_argument("--worker", choices=["trl"], help=argparse.SUPPRESS)
  return p.parse_args(argv)


def trl_worker(args) -> dict:
  """One TRL DPOTrainer run on `dpo.py`'s batches; timings from a step callback."""
  import numpy as np
  import torch
  import transformers
  import trl
  from datasets import Dataset
  from tokenizers import Tokenizer, models

  import dpo
  from jaxalign.metrics import measured_matmul_flops, training_flops
  from jaxalign.models.transformer import PRESETS, model_config

  torch.manual_seed(args.seed)
  bench_args = dpo.parse_args(_shared_flags(args))
  cfg = model_config(args.preset)
  rng, ref_rng = np.random.default_rng([args.seed, 0]), np.random.default_rng([args.seed, 1])
  n_steps = args.warmup + args.steps
  host = [dpo.random_batch(rng, ref_rng, cfg, bench_args) for _ in range(n_steps)]
  rows = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}
  for hb in host:
    for i in range(args.batch_pairs):
      rows["prompt_ids"].append(hb["prompt"][i][hb["prompt_mask"][i] > 0].tolist())
      rows["chosen_ids"].append(hb["chosen"][i][hb["chosen_mask"][i] > 0].tolist())
      rows["rejected_ids"].append(hb["rejected"][i][hb["rejected_mask"][i] > 0].tolist())
  dataset = Dataset.from_dict(rows)

  pre = PRESETS[args.preset]
  hf_cfg = transformers.LlamaConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
      num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
      max_position_embeddings=max(args.prompt_len + args.completion_len, pre.get("max_len", 2048)),
      rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta, tie_word_embeddings=False)
  model = transformers.LlamaForCausalLM(hf_cfg).float()
  ref_model = None if args.precompute_ref else transformers.LlamaForCausalLM(hf_cfg).float()
  vocab = {f"t{i}": i for i in range(cfg.vocab_size)}
  tok = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t1")),
                                             pad_token="t0", eos_token="t2", unk_token="t1")

  times, tokens, cpu = [], [], []

  class Timer(transformers.TrainerCallback):
    def on_step_begin(self, *a, **k):
      self.t0, self.c0 = time.perf_counter(), cpu_seconds()

    def on_step_end(self, *a, **k):
      times.append(time.perf_counter() - self.t0)
      cpu.append(cpu_seconds() - self.c0)

  class BenchTrainer(trl.DPOTrainer):
    def _prepare_dataset(self, dataset, *a, **k):  # already token ids
      return dataset

    def _get_train_sampler(self, *a, **k):  # the batches in order, as jaxalign sees them
      return torch.utils.data.SequentialSampler(self.train_dataset)

    def compute_loss(self, model, inputs, *a, **k):
      if model.training:
        tokens.append(int(inputs["attention_mask"].sum()))
      return super().compute_loss(model, inputs, *a, **k)

  with tempfile.TemporaryDirectory() as out:
    targs = trl.DPOConfig(
        output_dir=out, per_device_train_batch_size=args.batch_pairs, gradient_accumulation_steps=1,
        max_steps=n_steps, learning_rate=1e-3, lr_scheduler_type="cosine", warmup_steps=1, max_grad_norm=1.0,
        beta=0.1, loss_type=["sigmoid"], max_length=None, precompute_ref_log_probs=args.precompute_ref,
        logging_steps=10**6, save_strategy="no", report_to="none", use_cpu=True, bf16=args.bf16, fp16=False,
        dataloader_num_workers=0, disable_tqdm=True, seed=args.seed, remove_unused_columns=False,
        gradient_checkpointing=not args.trl_no_checkpointing)
    trainer = BenchTrainer(model=model, ref_model=ref_model, args=targs, train_dataset=dataset,
                           processing_class=tok, callbacks=[Timer()])
    trainer.train()

  timed = slice(args.warmup, None)
  step_time = statistics.median(times[timed])
  tok = statistics.mean(tokens[timed])
  n = sum(p.numel() for p in model.parameters()) - cfg.vocab_size * cfg.d_model  # as count_params
  peak = measured_matmul_flops(n=2048, repeats=10)
  flops = training_flops(n, tok, 0 if args.precompute_ref else tok)
  return dict(side="trl", trl_version=trl.__version__, torch_version=torch.__version__, bf16=args.bf16,
              gradient_checkpointing=not args.trl_no_checkpointing,
              torch_threads=torch.get_num_threads(), tokens_per_step=tok, step_time_s=step_time,
              tokens_per_s=tok / step_time, mfu=flops / step_time / peak, matmul_flops=peak,
              peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
              cpu_cores_used=sum(cpu[timed]) / sum(times[timed]), loadavg_1m=os.getloadavg()[0],
              step_times=times)


def _shared_flags(args) -> list[str]:
  return workload_flags(args) + ["--variable_lengths"] * args.variable_lengths + ["--precompute_ref"] * args.precompute_ref


def main(argv=None):
  args = parse_args(argv)
  if args.worker == "trl":
    print(json.dumps(trl_worker(args)))
    return
  shared = _shared_flags(args)
  trl_cmd = [sys.executable, os.path.abspath(__file__), "--worker", "trl", *shared,
             *["--trl_no_checkpointing"] * args.trl_no_checkpointing, *["--bf16"] * args.bf16]
  jax_cmd = [sys.executable, os.path.join(HERE, "dpo.py"), "--json", *shared, *["--packing"] * args.packing,
             *["--dtype", "bfloat16"] * args.bf16]
  from ppo import cpu_model

  out = dict(cpu_model=cpu_model(), workload={k: v for k, v in vars(args).items() if k != "worker"},
             **alternate("trl", trl_cmd, jax_cmd, args.rounds))
  print(json.dumps(out))


if __name__ == "__main__":
  main()
