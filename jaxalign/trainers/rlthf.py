"""RLTHF (Xu et al. 2025, arXiv 2502.13417; algorithms.md §8.13): targeted human relabelling of AI-labelled pairs.

  python -m jaxalign.rlthf --config=configs/rlthf.py --workdir=runs/rlthf [--config.rlthf.budget=0.1]

A data-curation loop around the reward-model and DPO trainers. The pairs come labelled by an AI annotator
(on the built-in task: Bradley–Terry draws on the true reward at `rlthf.ai_label_temperature`; on your data: the
file's own labels). Each of `rlthf.iterations` rounds trains a Bradley–Terry reward model on the current labels
(human-labelled pairs repeated `rlthf.amplification` times), scores every pair's margin
`m = r(chosen) − r(rejected)`, and sorts the pairs by it: the lowest margins are where the reward model most
disagrees with the label. Of the pairs no human has seen, the lowest `rlthf.flip` share is flipped without
asking, and the next `budget / iterations` share goes to the human annotator (on the built-in task the ground
truth answers; on your data the round writes `WORKDIR/round<t>/to_annotate.jsonl` and stops until
`annotated.jsonl` is there, see `read_annotations`). After the rounds, a last reward model trained on the curated
labels labels every pair no human saw (`rlthf.final_labels="reward_model"`, the paper's final step) or the curated
labels stand (`"curated"`); `rlthf.downstream` trains DPO (`config.loss`, `config.train`) on them.

The paper's elbow/knee detector, per-round budgets and back-off ratio are not specified (UNVERIFIED): here the
caller sets the flip share and the budget, and `sorted_margin_regions` is the pure function that splits a round.
Metrics (metrics.jsonl, step = round): `rlthf/label_accuracy` (built-in: agreement of the current labels with the
ground truth on untied pairs), `rlthf/human_share`, `rlthf/flipped_share`, `rlthf/rm_accuracy`; at the end
`rlthf/final_label_accuracy` and the downstream run's `eval/*`. Every stage is a run directory or file under
WORKDIR, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import copy
import json
import math
import os

import numpy as np

from jaxalign import judges
from jaxalign.data import builtin, pipeline
from jaxalign.errors import UserError, at
from jaxalign.inference import map_rows
from jaxalign.models.loading import load_reward_model
from jaxalign.runs import write_jsonl
from jaxalign.trainers import loop, prologue


def sorted_margin_regions(margins: np.ndarray, eligible: np.ndarray, *, n_flip: int, n_human: int) -> dict:
  """Splits one round: among the `eligible` pairs (no human label yet), sorted by margin ascending, the first
  `n_flip` are flipped without asking and the next `n_human` go to the human annotator. Returns index arrays
  `{"flip", "human"}` (ties in margin: the earlier index first)."""
  idx = np.flatnonzero(eligible)
  order = idx[np.argsort(margins[idx], kind="stable")]
  return {"flip": order[:n_flip], "human": order[n_flip:n_flip + n_human]}


def _truth(rows: list[dict]) -> np.ndarray:
  """Built-in: +1 when the row's chosen side has the higher true reward, −1 lower, 0 tied."""
  gt = lambda r, s: builtin.reward(r["prompt"], r[s], r.get(f"{s}_finished", True))
  return np.sign(np.array([gt(r, "chosen") - gt(r, "rejected") for r in rows]))


def _oriented(rows: list[dict], flip: np.ndarray) -> list[dict]:
  out = []
  for r, f in zip(rows, flip):
    if f:
      r = {**r, "chosen": r["rejected"], "rejected": r["chosen"], "chosen_finished": r.get("rejected_finished", True),
           "rejected_finished": r.get("chosen_finished", True)}
    out.append(r)
  return out


def _file_rows(rows: list[dict]) -> list[dict]:
  """JSONL rows (`sources.read_preference_jsonl` drops the finished flags: a built-in malformed completion
  keeps its own text; the reward model and DPO then score it with EOS, as any file's completion)."""
  return [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]


def read_annotations(path: str, ids: list[int]) -> dict[int, bool]:
  """`{id: True when the annotator prefers "a"}` from `annotated.jsonl` rows `{"id": int, "preferred": "a"|"b"}`,
  one per id of `to_annotate.jsonl`; anything else is a one-line error naming the file and line."""
  from jaxalign.data.sources import iter_objects
  want, got = set(ids), {}
  for line_no, obj in iter_objects(path):
    if type(obj.get("id")) is not int or obj["id"] not in want:
      raise at(path, line_no, f'field "id" must be one of the ids of to_annotate.jsonl, got {obj.get("id")!r}')
    if obj.get("preferred") not in ("a", "b"):
      raise at(path, line_no, f'field "preferred" must be "a" or "b", got {obj.get("preferred")!r}')
    got[obj["id"]] = obj["preferred"] == "a"
  missing = sorted(want - set(got))
  if missing:
    raise at(path, None, f"{len(missing)} pairs not annotated (first id {missing[0]})")
  return got


def _ask_humans(rows, human_idx, truth, round_dir: str) -> np.ndarray:
  """+1 where the human keeps the row's chosen side, −1 where they swap it (built-in: the ground truth; ties
  keep the label); user data: the annotation file round trip."""
  if truth is not None:
    return np.where(truth[human_idx] == 0, 1, truth[human_idx])
  ask = os.path.join(round_dir, "to_annotate.jsonl")
  done = os.path.join(round_dir, "annotated.jsonl")
  if not os.path.exists(ask):
    write_jsonl(ask, [{"id": int(i), "prompt": rows[i]["prompt"], "a": rows[i]["chosen"], "b": rows[i]["rejected"]}
                      for i in human_idx])
  if not os.path.exists(done):
    raise UserError(f"{ask}: {len(human_idx)} pairs to annotate; write {done} (one {{\"id\", \"preferred\": "
                    f"\"a\"|\"b\"}} per line) and rerun the same command")
  answers = read_annotations(done, [int(i) for i in human_idx])
  return np.array([1 if answers[int(i)] else -1 for i in human_idx])


def _on_file(config, workdir: str, trainer: str, init_from: str, path: str):
  """`config` for a sub-run of `trainer` on the pairs file `path` (the built-in tokenizer of WORKDIR when the
  pairs come from the built-in task)."""
  c = copy.deepcopy(config)
  with c.unlocked():
    if config.data.source == "builtin" and not config.data.tokenizer and not config.model.hf_path:
      c.data.tokenizer = os.path.join(workdir, "tokenizer", "builtin_sp.model")
    c.trainer, c.init_from = trainer, init_from
    c.data.source, c.data.path, c.data.num_examples, c.data.eval_fraction = "jsonl", path, 0, 0.0
  return c


def _reward_model(config, workdir: str, sft: str, path: str, rm_dir: str) -> None:
  c = _on_file(config, workdir, "reward_model", sft, path)
  r = config.rlthf
  with c.unlocked():
    c.reward.margin, c.reward.property, c.reward.eval_pairs = False, "reward", int(r.rm_eval_pairs)
    c.train.steps, c.train.batch_size = int(r.rm_steps), int(r.rm_batch_size)
    c.train.learning_rate, c.train.warmup_steps, c.train.precompute_ref = 1e-3, 10, False
    c.train.checkpoint_every = c.eval.every = int(r.rm_steps)
  from jaxalign.trainers.reward import train_reward_model
  train_reward_model(c, rm_dir)


def _margins(rm_dir: str, tok, config, rows: list[dict], mesh) -> np.ndarray:
  """`r(chosen) − r(rejected)` of every row under the reward model of `rm_dir`."""
  m = load_reward_model(rm_dir, mesh)
  d = config.data
  arrays = pipeline.tokenize_preference(tok, rows, d.prompt_len, d.completion_len, d.prompt_truncation,
                                        d.completion_truncation)
  if len(arrays["prompt"]) != len(rows):
    raise UserError(f"{d.path or 'data'}: some pairs lose every completion token to truncation; raise "
                    "data.completion_len")
  (ra, rb), _ = map_rows(lambda p, b: judges.pair_rewards(m.cfg, p, b["prompt"], b["prompt_mask"], b["chosen"],
                                                          b["chosen_mask"], b["rejected"], b["rejected_mask"]),
                         m.params, arrays, mesh, batch_size=int(config.rlthf.rm_batch_size), desc="reward margins")
  return np.asarray(ra - rb, np.float64)


def _pairs(config) -> tuple[list[dict], np.ndarray | None]:
  """The AI-labelled pairs and (built-in) their ground-truth orientation."""
  d = config.data
  if d.source == "builtin":
    rows = builtin.preference_pairs(int(d.num_examples), seed=int(config.seed), corrupt_frac=float(d.corrupt_frac),
                                    label_temperature=float(config.rlthf.ai_label_temperature))
    return rows, _truth(rows)
  return pipeline.preference_split(d, int(config.seed))[0], None


def check(config) -> None:
  if config.rlthf.downstream:
    from jaxalign.trainers import offline
    c = copy.deepcopy(config)
    with c.unlocked():
      c.trainer = "offline"
    offline.check(c)


def train(config, workdir: str):
  from jaxalign.metrics import MetricWriter
  r = config.rlthf
  run = prologue.begin(config, workdir, policy=False)
  mesh, tok, sft = run.mesh, run.tok, run.init_from
  rows, truth = _pairs(config)
  n = len(rows)
  n_human = math.ceil(float(r.budget) * n / int(r.iterations))
  n_flip = int(round(float(r.flip) * n))
  state_path = os.path.join(workdir, "rlthf_state.json")
  state = {"round": 0, "flip": [False] * n, "human": []}
  if os.path.exists(state_path):
    with open(state_path) as f:
      state = json.load(f)
  flip, human = np.array(state["flip"], bool), np.zeros(n, bool)
  human[state["human"]] = True
  writer = MetricWriter(workdir, resume_step=int(state["round"]), tensorboard=False)  # rounds done are kept
  accuracy = lambda f: float(np.mean((truth * np.where(f, -1, 1))[truth != 0] > 0)) if truth is not None else None

  def train_round(t: int, final: bool = False) -> str:
    rd = os.path.join(workdir, "final" if final else f"round{t}")
    os.makedirs(rd, exist_ok=True)
    data = _oriented(rows, flip)
    train_rows = data + [x for x, h in zip(data, human) if h] * (int(r.amplification) - 1)
    # the reward model holds out the last rm_eval_pairs rows: keep them un-amplified, after the rest
    order = np.random.default_rng([int(config.seed), t]).permutation(len(train_rows))
    path = os.path.join(rd, "pairs.jsonl")
    if not os.path.exists(path):
      write_jsonl(path, _file_rows([train_rows[i] for i in order]))
    _reward_model(config, workdir, sft, path, os.path.join(rd, "rm"))
    return rd

  for t in range(int(state["round"]), int(r.iterations)):
    rd = train_round(t)
    margins = _margins(os.path.join(rd, "rm"), tok, config, _oriented(rows, flip), mesh)
    split = sorted_margin_regions(margins, ~human, n_flip=n_flip, n_human=min(n_human, int((~human).sum())))
    flip[split["flip"]] = ~flip[split["flip"]]
    keep = _ask_humans(_oriented(rows, flip), split["human"], None if truth is None else truth * np.where(flip, -1, 1),
                       rd)
    flip[split["human"]] = np.where(keep > 0, flip[split["human"]], ~flip[split["human"]])
    human[split["human"]] = True
    rm_final = loop.final_metrics(os.path.join(rd, "rm"))
    row = {"step": t + 1, "rlthf/human_share": float(human.mean()), "rlthf/flipped_share": float(flip.mean()),
           "rlthf/rm_accuracy": float(rm_final.get("eval/accuracy", float("nan")))}
    if truth is not None:
      row["rlthf/label_accuracy"] = accuracy(flip)
    writer.write(row["step"], {k: v for k, v in row.items() if k != "step"})
    state = {"round": t + 1, "flip": flip.tolist(), "human": np.flatnonzero(human).tolist()}
    with open(state_path + ".tmp", "w") as f:
      json.dump(state, f)
    os.replace(state_path + ".tmp", state_path)
    print(f"rlthf round {t + 1}: " + ", ".join(f"{k.split('/')[1]} {v:.4f}" for k, v in row.items() if k != "step"))
  final_flip = flip.copy()
  if r.final_labels == "reward_model":
    rd = train_round(int(r.iterations), final=True)
    margins = _margins(os.path.join(rd, "rm"), tok, config, _oriented(rows, flip), mesh)
    final_flip = np.where(human, flip, np.where(margins < 0, ~flip, flip))
  final_path = os.path.join(workdir, "final_pairs.jsonl")
  write_jsonl(final_path, _file_rows(_oriented(rows, final_flip)))
  end = {"step": int(r.iterations) + 1, "rlthf/human_share": float(human.mean())}
  if truth is not None:
    end["rlthf/final_label_accuracy"] = accuracy(final_flip)
    end["rlthf/ai_label_accuracy"] = accuracy(np.zeros(n, bool))
  if r.downstream:
    c = _on_file(config, workdir, "offline", sft, final_path)
    with c.unlocked():
      if config.data.source == "builtin":  # evaluated as every built-in run is (ground truth, held-out prompts)
        c.eval.task = "builtin"
    from jaxalign.trainers import offline
    offline.train(c, os.path.join(workdir, "dpo"))
    end.update({k: v for k, v in loop.final_metrics(os.path.join(workdir, "dpo")).items() if k.startswith("eval/")})
  writer.write(end["step"], {k: v for k, v in end.items() if k != "step"})
  writer.close()
  return None
