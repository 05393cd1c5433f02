"""One timed TRL run of an online method (Online IPO, Nash-MD or PPO); prints one JSON object on its last line.

  TRL_EXPERIMENTAL_SILENCE=1 /work/venv-trl/bin/python experiments/bench/trl_online_worker.py \\
      --method online_ipo --prompts prompts.json --model_json '{"vocab_size": 8192, ...}' \\
      --batch_size 8 --max_new_tokens 24 --warmup 1 --steps 2

Runs in a venv with TRL 1.12 (the last release shipping `trl.experimental.{online_dpo,nash_md,ppo}`), torch (CPU)
and transformers; it imports neither jaxalign nor jax, so its peak RSS is its own. Nothing is downloaded: the
models are random-init `LlamaForCausalLM` / `LlamaForSequenceClassification` built from `--model_json`, and the
tokenizer is a WordLevel vocabulary `t0 .. t{V-1}` whose text "t5 t17 t3" encodes to exactly [5, 17, 3] (checked
at start; no BOS or other special token is added).

Prompts (`--prompts`) are used in file order, cycling, B per step: the dataset holds exactly B * (W + N) rows and
is read sequentially (online methods: `train_sampling_strategy="sequential"`, checked against the prompts each
`training_step` gets; PPO: its shuffling DataLoader is replaced by an unshuffled one of batch B).

How a step is split into rollout and update:

- online_ipo / nash_md: one optimizer step (one `training_step`, gradient_accumulation_steps=1) is timed by a
  `TrainerCallback` from `on_step_begin` to `on_step_end`. Inside it, the rollout is the time spent in TRL's
  sampling method (`OnlineDPOTrainer._generate`: prompt tokenisation + `generate` of 2B rows;
  `NashMDTrainer._generate_completions`: the policy's and the policy/reference mixture's `generate`) plus its
  reward scoring method (`OnlineDPOTrainer._calculate_rewards_from_functions`: decode, re-tokenise, reward model
  forward; `NashMDTrainer._compute_rewards`: reward model forward on token ids). Both are wrapped on the trainer
  instance. update_time = step_time - rollout_time: the reference log-prob forward, the policy forward/backward,
  the loss, the stats TRL logs, clipping and the AdamW step.
- ppo: `PPOTrainer.train()` runs its own loop (no `on_step_begin`); an iteration is timed from the previous
  iteration's `on_step_end` (or `on_train_begin`) to its own `on_step_end`. The module function
  `ppo_trainer.forward` is wrapped: its first call in an iteration with the policy+value wrapper (the first PPO
  micro-batch forward) marks the end of the rollout. So the rollout is `batch_generation` + the reference,
  value and reward forwards + rewards / GAE advantages; the update is the `num_ppo_epochs * num_mini_batches`
  optimizer steps and the iteration's logging. The previous iteration's trailing `del` / `gc.collect()` falls in
  the next rollout.

`rollout_breakdown_s` has medians of the parts, measured separately: `generate` (time inside
`GenerationMixin.generate`, patched on the class; Nash-MD: `generate_mixture` is the mixture's share),
`ref_forward` (forward hooks on the reference model outside `generate`: in the update for the online methods, in
the rollout for PPO), `reward` (the reward method above; PPO: hooks on the reward model's backbone, as
`get_reward` calls it), `value` (PPO: the value backbone before the update), `gc_rollout` (PPO: garbage-collection
pauses before the update, from `gc.callbacks`; `gc_time_s` is the whole step's).

Generated tokens are counted from what `generate` returned: per completion, the tokens up to and including the
first EOS, or all of them if none (PPO runs with no stop token, so every response is G tokens and all G count).
"""

from __future__ import annotations

import argparse
import collections
import copy
import functools
import json
import os
import resource
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import cpu_seconds  # noqa: E402  (stdlib only)

METHODS = ("online_ipo", "nash_md", "ppo")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--method", required=True, choices=METHODS)
  p.add_argument("--prompts", required=True,
                 help='JSON file: {"prompts": [[ids], ...], "eos_id": int, "pad_id": int, "bos_id": int}')
  p.add_argument("--model_json", required=True, help="JSON: vocab_size, d_model, n_layers, n_heads, n_kv_heads, "
                 "d_ff, norm_eps, rope_theta, max_len")
  p.add_argument("--batch_size", type=int, default=8, help="prompts per step (pairs, or PPO rollouts)")
  p.add_argument("--max_new_tokens", type=int, default=64, help="generated tokens per completion")
  p.add_argument("--steps", type=int, default=3, help="timed steps (medians reported)")
  p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--ppo_epochs", type=int, default=4)
  p.add_argument("--ppo_minibatches", type=int, default=1)
  return p.parse_args(argv)


def build_tokenizer(vocab_size: int, pad_id: int, eos_id: int, bos_id: int):
  """WordLevel tokenizer over "t0" .. "t{V-1}": text "t5 t17 t3" <-> ids [5, 17, 3], no special tokens added.

  A negative `bos_id` means no BOS token."""
  import transformers
  from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

  backend = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token=f"t{pad_id}"))
  backend.pre_tokenizer = pre_tokenizers.Whitespace()
  # single_word: otherwise the added special "t1" would also match inside "t17" before pre-tokenisation.
  special = lambda i: AddedToken(f"t{i}", single_word=True, special=True, normalized=False)  # noqa: E731
  tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=special(pad_id),
                                             eos_token=special(eos_id),
                                             bos_token=special(bos_id) if bos_id >= 0 else None)
  tok.padding_side = "left"
  probe = [5 % vocab_size, 17 % vocab_size, 3 % vocab_size, eos_id, pad_id, vocab_size - 1,
           int(f"{eos_id}7") % vocab_size] + [bos_id] * (bos_id >= 0)
  text = " ".join(f"t{i}" for i in probe)
  assert tok(text)["input_ids"] == probe, (tok(text)["input_ids"], probe)
  assert tok(text + " ", add_special_tokens=False)["input_ids"] == probe
  assert tok.decode(probe) == text
  return tok


def build_models(m: dict, ids: dict, seed: int, method: str):
  """Policy, reference (a deep copy), reward model and (PPO) value model, float32, random init."""
  import torch
  import transformers

  torch.manual_seed(seed)
  cfg = dict(vocab_size=m["vocab_size"], hidden_size=m["d_model"], intermediate_size=m["d_ff"],
             num_hidden_layers=m["n_layers"], num_attention_heads=m["n_heads"], num_key_value_heads=m["n_kv_heads"],
             max_position_embeddings=m["max_len"], rms_norm_eps=m["norm_eps"],
             rope_parameters={"rope_type": "default", "rope_theta": float(m["rope_theta"])},
             tie_word_embeddings=False, pad_token_id=ids["pad_id"], eos_token_id=ids["eos_id"],
             bos_token_id=ids["bos_id"] if ids["bos_id"] >= 0 else None)
  policy = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)).float()
  ref = copy.deepcopy(policy).eval()
  reward = transformers.LlamaForSequenceClassification(transformers.LlamaConfig(**cfg, num_labels=1)).float()
  value = None
  if method == "ppo":
    value = transformers.LlamaForSequenceClassification(transformers.LlamaConfig(**cfg, num_labels=1)).float()
  return policy, ref, reward, value


class Probe:
  """Per-step accumulators: seconds per part, generated tokens and completions."""

  def __init__(self, eos_id: int, count_to_eos: bool):
    self.eos_id, self.count_to_eos = eos_id, count_to_eos
    self.in_generate = 0
    self.in_update = False
    self.update_start = None
    self.max_generate_prompt_len = 0
    self.reset()

  def reset(self):
    self.acc = collections.defaultdict(float)
    self.tokens = 0
    self.completions = 0
    self.in_update = False
    self.update_start = None

  def wrap(self, name, fn):
    @functools.wraps(fn)
    def timed(*a, **k):
      t0 = time.perf_counter()
      try:
        return fn(*a, **k)
      finally:
        self.acc[name] += time.perf_counter() - t0
    return timed

  def hook(self, module, name, when=lambda: True):
    """Adds the time of `module`'s forward calls to `name` when `when()` holds at the call."""
    starts = []

    def pre(mod, args):
      starts.append(time.perf_counter() if when() else None)

    def post(mod, args, out):
      t0 = starts.pop()
      if t0 is not None:
        self.acc[name] += time.perf_counter() - t0

    module.register_forward_pre_hook(pre)
    module.register_forward_hook(post)

  def time_gc(self):
    """Adds garbage-collection pauses (TRL's PPO loop calls gc.collect() twice an iteration) to "gc"."""
    import gc

    starts = []

    def callback(phase, info):
      if phase == "start":
        starts.append(time.perf_counter())
      elif starts:
        self.acc["gc"] += time.perf_counter() - starts.pop()

    gc.callbacks.append(callback)

  def count(self, new_tokens):
    """`new_tokens`: [rows, generated] as `generate` returned them after the prompt."""
    import torch

    rows, g = new_tokens.shape
    if self.count_to_eos and g:
      is_eos = new_tokens == self.eos_id
      first = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, torch.full((rows,), g))
      self.tokens += int(first.sum())
    else:
      self.tokens += rows * g
    self.completions += rows


def patch_generate(probe: Probe):
  """Times and counts every `generate` (policy, PPO policy, Nash-MD mixture wrapper alike)."""
  from transformers.generation.utils import GenerationMixin

  original = GenerationMixin.generate

  @functools.wraps(original)
  def generate(model, *a, **k):
    input_ids = k["input_ids"] if "input_ids" in k else a[0]
    probe.in_generate += 1
    t0 = time.perf_counter()
    try:
      out = original(model, *a, **k)
    finally:
      probe.in_generate -= 1
      dt = time.perf_counter() - t0
      probe.acc["generate"] += dt
      if type(model).__name__ == "GeometricMixtureWrapper":  # Nash-MD's mixture sampling
        probe.acc["generate_mixture"] += dt
    sequences = out if hasattr(out, "shape") else out.sequences
    probe.count(sequences[:, input_ids.shape[1]:])
    probe.max_generate_prompt_len = max(probe.max_generate_prompt_len, int(input_ids.shape[1]))
    return out

  GenerationMixin.generate = generate


def median(xs):
  return statistics.median(xs) if xs else None


def run_online(args, tok, models, prompts, ids, probe, out_dir):
  """Online IPO or Nash-MD through TRL's trainer loop; per-step records."""
  import transformers
  from datasets import Dataset

  policy, ref, reward, _ = models
  b, n_steps = args.batch_size, args.warmup + args.steps
  texts = [" ".join(f"t{i}" for i in prompts[j % len(prompts)]) + " " for j in range(b * n_steps)]
  # The trailing space: OnlineDPO scores `prompt + completion` as one string, so "t5 t17" + "t3" would merge.
  dataset = Dataset.from_dict({"prompt": texts})
  common = dict(
      output_dir=out_dir, per_device_train_batch_size=b, gradient_accumulation_steps=1, max_steps=n_steps,
      max_new_tokens=args.max_new_tokens, max_length=max(len(p) for p in prompts) + 1 + args.max_new_tokens,
      temperature=1.0, top_k=0, top_p=1.0, min_p=None, repetition_penalty=1.0, beta=0.1, learning_rate=1e-6,
      missing_eos_penalty=None, use_vllm=False, use_cpu=True, bf16=False, fp16=False, report_to="none",
      save_strategy="no", logging_steps=10**6, disable_tqdm=True, gradient_checkpointing=False,
      activation_checkpointing=False, train_sampling_strategy="sequential", dataloader_num_workers=0, seed=args.seed)

  if args.method == "online_ipo":
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer
    config = OnlineDPOConfig(loss_type="ipo", **common)
    trainer_cls, extra = OnlineDPOTrainer, dict(reward_funcs=reward, reward_processing_classes=tok)
  else:
    from trl.experimental.nash_md import NashMDConfig, NashMDTrainer
    config = NashMDConfig(mixture_coef=0.5, **common)
    trainer_cls, extra = NashMDTrainer, dict(reward_funcs=reward)

  records = []

  class StepTimer(transformers.TrainerCallback):
    def on_step_begin(self, *a, **k):
      probe.reset()
      self.t0, self.c0 = time.perf_counter(), cpu_seconds()

    def on_step_end(self, *a, **k):
      t, c = time.perf_counter() - self.t0, cpu_seconds() - self.c0
      records.append(dict(probe.acc, step=t, cpu=c, rollout=probe.acc["rollout_gen"] + probe.acc["rollout_reward"],
                          reward=probe.acc["rollout_reward"], tokens=probe.tokens, completions=probe.completions))

  trainer = trainer_cls(model=policy, ref_model=ref, args=config, train_dataset=dataset, processing_class=tok,
                        callbacks=[StepTimer()], **extra)
  trainer.remove_callback(transformers.PrinterCallback)  # keep stdout to the JSON line
  if args.method == "online_ipo":
    trainer._generate = probe.wrap("rollout_gen", trainer._generate)
    trainer._calculate_rewards_from_functions = probe.wrap("rollout_reward",
                                                           trainer._calculate_rewards_from_functions)
  else:
    trainer._generate_completions = probe.wrap("rollout_gen", trainer._generate_completions)
    trainer._compute_rewards = probe.wrap("rollout_reward", trainer._compute_rewards)
  probe.hook(trainer.ref_model, "ref_forward", when=lambda: probe.in_generate == 0)

  seen = []
  training_step = trainer.training_step

  def recording_step(model, inputs, *a, **k):
    seen.append(list(inputs["prompt"]))
    return training_step(model, inputs, *a, **k)

  trainer.training_step = recording_step
  trainer.train()
  in_order = seen == [texts[i * b:(i + 1) * b] for i in range(n_steps)]
  assert in_order, "TRL did not feed the prompts in order"
  return records, trainer


def run_ppo(args, tok, models, prompts, ids, probe, out_dir):
  """TRL's PPOTrainer.train(); per-iteration records (see the module docstring for the split)."""
  import torch
  import transformers
  from datasets import Dataset
  from transformers import PrinterCallback
  from trl.experimental.ppo import PPOConfig, PPOTrainer
  from trl.experimental.ppo import ppo_trainer as ppo_module

  policy, ref, reward, value = models
  b, n_steps = args.batch_size, args.warmup + args.steps
  rows = [list(prompts[j % len(prompts)]) for j in range(b * n_steps)]
  dataset = Dataset.from_dict({"input_ids": rows})
  config = PPOConfig(
      output_dir=out_dir, per_device_train_batch_size=b, gradient_accumulation_steps=1,
      num_ppo_epochs=args.ppo_epochs, num_mini_batches=args.ppo_minibatches, local_rollout_forward_batch_size=b,
      total_episodes=b * n_steps, response_length=args.max_new_tokens, temperature=1.0, kl_coef=0.05,
      vf_coef=0.1, gamma=1.0, lam=0.95, missing_eos_penalty=None, stop_token=None, stop_token_id=None,
      num_sample_generations=0, learning_rate=1e-6, use_cpu=True, bf16=False, fp16=False, report_to="none",
      save_strategy="no", logging_steps=10**6, disable_tqdm=True, gradient_checkpointing=False,
      activation_checkpointing=False, dataloader_num_workers=0, seed=args.seed)

  records = []
  holder = {}

  class IterTimer(transformers.TrainerCallback):
    def on_train_begin(self, *a, **k):
      probe.reset()
      self.t0, self.c0 = time.perf_counter(), cpu_seconds()

    def on_step_end(self, *a, **k):
      now, c = time.perf_counter(), cpu_seconds()
      rollout = (probe.update_start if probe.update_start is not None else now) - self.t0
      gc_rollout = probe.acc["gc_before_update"] if probe.update_start is not None else probe.acc["gc"]
      records.append(dict(probe.acc, step=now - self.t0, cpu=c - self.c0, rollout=rollout, gc_rollout=gc_rollout,
                          tokens=probe.tokens, completions=probe.completions))
      probe.reset()
      self.t0, self.c0 = now, c

  forward = ppo_module.forward

  def marking_forward(model, query_responses, pad_token_id):
    if model is holder.get("wrapper") and not probe.in_update:
      probe.in_update, probe.update_start = True, time.perf_counter()
      probe.acc["gc_before_update"] = probe.acc["gc"]
    return forward(model, query_responses, pad_token_id)

  ppo_module.forward = marking_forward
  ppo_module.batch_generation = probe.wrap("batch_generation", ppo_module.batch_generation)

  trainer = PPOTrainer(args=config, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                       train_dataset=dataset, value_model=value, eval_dataset=dataset.select(range(b)),
                       callbacks=[IterTimer()])
  trainer.remove_callback(PrinterCallback)  # PPO logs every iteration; keep stdout to the JSON line
  holder["wrapper"] = trainer.model
  assert (config.batch_size, config.mini_batch_size, config.local_rollout_forward_batch_size,
          config.num_total_batches) == (b, b // args.ppo_minibatches, b, n_steps), vars(config)
  # In order, unshuffled (TRL's own DataLoader shuffles): what train() iterates is self.dataloader.
  trainer.dataloader = torch.utils.data.DataLoader(dataset, batch_size=b, shuffle=False, drop_last=True,
                                                   collate_fn=trainer.data_collator)
  seen = []
  collate = trainer.dataloader.collate_fn

  def recording_collate(features):
    batch = collate(features)
    seen.append([f["input_ids"] for f in features])
    return batch

  trainer.dataloader.collate_fn = recording_collate
  probe.hook(trainer.ref_model, "ref_forward", when=lambda: probe.in_generate == 0)
  probe.hook(getattr(reward, reward.base_model_prefix), "reward")
  probe.hook(getattr(value, value.base_model_prefix), "value", when=lambda: not probe.in_update)
  trainer.train()
  assert seen[:n_steps] == [rows[i * b:(i + 1) * b] for i in range(n_steps)], "PPO prompts out of order"
  return records, trainer


NOTES = {
    "online_ipo": (
        "TRL OnlineDPOTrainer(loss_type=ipo): one generate of 2B rows (each prompt repeated, KV cache on), so 2 "
        "completions per prompt; the reward model scores all 2B completions separately, after decoding them "
        "(special tokens skipped) and re-tokenising prompt+completion text (right-padded); the reference forward "
        "and the policy forward/backward run on all 2B rows, each padded to the longest completion; IPO loss "
        "((logratio - 1/(2 beta))^2) on summed, not length-averaged, completion log-probs; AdamW with "
        "max_grad_norm=1 clipping, linear lr schedule. rollout = _generate + _calculate_rewards_from_functions."),
    "nash_md": (
        "TRL NashMDTrainer: per prompt one policy completion (generate, KV cache on) and one from the geometric "
        "mixture of policy and reference logits (a second generate, GeometricMixtureWrapper: with transformers 5.25 "
        "its use_cache=False is ignored and the policy and the reference share ONE DynamicCache, each appending "
        "its keys/values, so the cache grows 2 entries per token and the mixture's logits are not those of a "
        "correct mixture; cost is about two cached decodes with a twice-longer cache), so 2B completions per "
        "step (rollout_breakdown_s.generate_mixture is the mixture's share of generate); the reward model "
        "scores both sets from token ids (get_reward, no re-tokenisation); the loss is REINFORCE on the policy "
        "completions only (policy forward/backward and reference forward on B rows); tokenize_row prepends BOS "
        "to a prompt that does not start with it (see extra_prompt_tokens). rollout = _generate_completions "
        "+ _compute_rewards."),
    "ppo": (
        "TRL PPOTrainer: rollout = batch_generation (generate with output_scores: the policy log-probs come from "
        "the sampling scores, no separate policy forward) + reference forward + value forward + reward forward "
        "(local_rollout_forward_batch_size = B, one chunk) + GAE; update = num_ppo_epochs x num_mini_batches "
        "optimizer steps, each a forward of the value backbone and the policy (PolicyAndValueWrapper) on the "
        "mini-batch; no stop token, so every response is G tokens; sampling temperature is 1+1e-7 (TRL adds "
        "1e-7); no gradient clipping in TRL's PPO loop; its shuffling DataLoader replaced by an in-order one; "
        "the loop calls gc.collect() twice an iteration, both before the update (rollout_breakdown_s.gc_rollout)."),
}


def main(argv=None):
  args = parse_args(argv)
  with open(args.prompts) as f:
    spec = json.load(f)
  model = json.loads(args.model_json)
  ids = {k: int(spec[k]) for k in ("eos_id", "pad_id", "bos_id")}
  prompts = [list(map(int, p)) for p in spec["prompts"]]

  import torch
  import transformers
  import trl

  tok = build_tokenizer(model["vocab_size"], **ids)
  models = build_models(model, ids, args.seed, args.method)
  probe = Probe(ids["eos_id"], count_to_eos=args.method != "ppo")
  patch_generate(probe)
  probe.time_gc()
  with tempfile.TemporaryDirectory() as out_dir:
    run = run_ppo if args.method == "ppo" else run_online
    records, trainer = run(args, tok, models, prompts, ids, probe, out_dir)

  n_steps = args.warmup + args.steps
  assert len(records) == n_steps, (len(records), n_steps)
  timed = records[args.warmup:]
  step_time = median([r["step"] for r in timed])
  rollout_time = median([r["rollout"] for r in timed])
  tokens = statistics.mean([r["tokens"] for r in timed])
  b = args.batch_size
  used = [prompts[j % len(prompts)] for j in range(b * n_steps)]
  parts = {"online_ipo": ("generate", "reward", "ref_forward"),
           "nash_md": ("generate", "generate_mixture", "reward", "ref_forward"),
           "ppo": ("batch_generation", "generate", "ref_forward", "value", "reward", "gc_rollout")}[args.method]
  breakdown = {k: median([r.get(k, 0.0) for r in timed]) for k in parts}
  return dict(
      side="trl", method=args.method, trl_version=trl.__version__, transformers_version=transformers.__version__,
      torch_version=torch.__version__, torch_threads=torch.get_num_threads(), batch_size=b,
      max_new_tokens=args.max_new_tokens, steps=args.steps, warmup=args.warmup,
      step_time_s=step_time, rollout_time_s=rollout_time,
      update_time_s=median([r["step"] - r["rollout"] for r in timed]),
      generated_tokens_per_step=tokens,
      completions_per_step=statistics.mean([r["completions"] for r in timed]),
      pairs_per_step=None if args.method == "ppo" else b,
      rollouts_per_step=b if args.method == "ppo" else None,
      pairs_per_s=None if args.method == "ppo" else b / step_time,
      rollouts_per_s=b / step_time, rollout_tokens_per_s=tokens / step_time,
      rollout_breakdown_s=breakdown, gc_time_s=median([r.get("gc", 0.0) for r in timed]),
      peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
      cpu_cores_used=sum(r["cpu"] for r in timed) / sum(r["step"] for r in timed),
      loadavg_1m=os.getloadavg()[0],
      gradient_checkpointing=bool(trainer.args.gradient_checkpointing or trainer.args.activation_checkpointing
                                  or getattr(models[0], "is_activation_checkpointing", False)),
      prompt_len_max=max(len(p) for p in used),
      extra_prompt_tokens=probe.max_generate_prompt_len - max(len(p) for p in used),
      tokenizer_adds_bos=False, prompts_in_order=True,
      attn_implementation=models[0].config._attn_implementation,
      ppo_epochs=args.ppo_epochs if args.method == "ppo" else None,
      ppo_minibatches=args.ppo_minibatches if args.method == "ppo" else None,
      notes=NOTES[args.method],
      step_times=[r["step"] for r in records], rollout_times=[r["rollout"] for r in records],
      step_times_include_warmup=True)


if __name__ == "__main__":
  print(json.dumps(main()))
