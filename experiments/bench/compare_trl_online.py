"""Online IPO, Nash-MD and PPO through TRL and jaxalign, side by side in one invocation.

  python -m venv /work/venv-trl && /work/venv-trl/bin/pip install torch==2.13.0 trl==1.12.0 datasets requests
  python experiments/bench/compare_trl_online.py --trl_python /work/venv-trl/bin/python --batch_size 32

TRL 1.12.0 is the last release that ships all three trainers (`trl.experimental.online_dpo.OnlineDPOTrainer`,
`nash_md.NashMDTrainer`, `ppo.PPOTrainer`; 1.13 dropped PPO, 1.14 Nash-MD), so it lives in its own venv
(`--trl_python`, default $TRL_PYTHON) and runs `trl_online_worker.py` there. jaxalign runs
`python -m jaxalign.main` under this interpreter.

Both sides get the same workload: a random-init policy of `--preset`'s Llama shapes, prompts from the built-in task's training pool
(the same token ids: jaxalign draws each step's batch from the pool, TRL takes the pool shuffled with `--seed`), `--batch_size` prompts per step, `--max_new_tokens` sampled at
temperature 1 (no top-k/p), reward models of the same shapes scoring every completion, float32, the reference
forward in the step:
- online_ipo: two samples per prompt from the policy, both scored by the reward model, the IPO loss
  (jaxalign `configs/online_ipo.py` with `online.annotator=reward_model`; TRL OnlineDPOTrainer, loss_type ipo);
- nash_md: one policy sample against one from the policy/reference geometric mixture (β 0.5), scored, the
  Nash-MD-PG loss (jaxalign `configs/nash_md.py`; TRL NashMDTrainer);
- ppo: rollouts, reward and value model forwards, `--ppo_epochs` passes, a separate value network initialised
  from the (first) reward model (jaxalign `configs/ppo_transformed.py`, `ppo.value=reward_model`; TRL PPOTrainer);
- ppo2: jaxalign with two reward models (LSC aggregation), against TRL's one-model PPO (TRL has no second one).

Each run is its own process; its peak RSS and CPU seconds are its own (os.wait4). Runs alternate TRL, jaxalign per
method, `--rounds` times; medians over the timed steps of a run, then over rounds. Reported per method and side:
step time, rollout / update split, annotated pairs per second (online methods), rollout tokens per second
(tokens sampled per step ÷ step time), peak RSS; and the jaxalign / TRL ratios. The reward models (jaxalign's
`configs/reward_model.py:tiny`, trained `--rm_steps` steps) are cached in `--cache`; their quality does not enter
a timing. Prints a table (or one JSON line, `--json`) and writes the JSON to `--out`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)

import ppo as ppo_bench  # noqa: E402  (reward-model cache, jaxalign command lines, cpu_model; imports no jax)

METHODS = ("online_ipo", "nash_md", "ppo", "ppo2")
CONFIGS = {"online_ipo": "configs/online_ipo.py", "nash_md": "configs/nash_md.py",
           "ppo": "configs/ppo_transformed.py", "ppo2": "configs/ppo_transformed.py"}
TRL_METHOD = {"online_ipo": "online_ipo", "nash_md": "nash_md", "ppo": "ppo", "ppo2": "ppo"}
KEYS = ("step_time_s", "rollout_time_s", "update_time_s", "pairs_per_s", "rollouts_per_s", "rollout_tokens_per_s",
        "generated_tokens_per_step", "peak_rss_mb", "cpu_cores_used")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {', '.join(METHODS)}")
  p.add_argument("--preset", default="tiny", choices=["nano", "tiny", "small"])
  p.add_argument("--batch_size", type=int, default=32, help="prompts per step (pairs / rollouts)")
  p.add_argument("--max_new_tokens", type=int, default=24)
  p.add_argument("--steps", type=int, default=4, help="timed steps per run (medians)")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation)")
  p.add_argument("--ppo_epochs", type=int, default=4)
  p.add_argument("--rounds", type=int, default=1, help="TRL, jaxalign alternations per method")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--rm_steps", type=int, default=30, help="training steps of each cached reward model")
  p.add_argument("--trl_python", default=os.environ.get("TRL_PYTHON", sys.executable),
                 help="interpreter with trl==1.12.0 (default: $TRL_PYTHON, else this one)")
  p.add_argument("--skip_trl", action="store_true", help="jaxalign side only (e.g. without a TRL venv)")
  p.add_argument("--cache", default="/tmp/jaxalign-bench-online", help="reward models, prompts, run folders")
  p.add_argument("--out", default=None, help="JSON results (default: CACHE/online.json)")
  p.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
  args = p.parse_args(argv)
  args.methods = [m for m in args.methods.split(",") if m]
  bad = [m for m in args.methods if m not in METHODS]
  if bad:
    p.error(f"--methods: unknown {', '.join(bad)} (choose from {', '.join(METHODS)})")
  if args.warmup < 1 or args.steps < 1:
    p.error("--warmup and --steps must be >= 1 (the first warm-up step is the compile)")
  args.cache = os.path.abspath(args.cache)
  return args


def run_measured(cmd: list[str], log: str, cwd: str = REPO, env: dict | None = None) -> tuple[int, float, dict]:
  """Runs `cmd` with its output in `log`; (exit status, wall seconds, its own peak RSS MB and CPU seconds)."""
  with open(log, "w") as f:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
  proc.returncode = os.waitstatus_to_exitcode(status)
  return proc.returncode, wall, dict(peak_rss_mb=ru.ru_maxrss / 1024.0, cpu_s=ru.ru_utime + ru.ru_stime)


def prompts_file(args) -> str:
  """The built-in task's training prompts as token ids (the pool the jaxalign run draws from), for the TRL side."""
  import numpy as np

  from jaxalign.data import builtin

  path = os.path.join(args.cache, f"prompts_{args.seed}.json")
  if not os.path.exists(path):
    tok = builtin.builtin_tokenizer(os.path.join(args.cache, "tokenizer"))
    pool = list(builtin.TRAIN_PROMPTS)
    np.random.default_rng(args.seed).shuffle(pool)
    ids = [tok.encode(p) for p in pool]
    if tok.bos_id >= 0:
      ids = [[tok.bos_id, *x] for x in ids]
    os.makedirs(args.cache, exist_ok=True)
    with open(path, "w") as f:
      json.dump(dict(prompts=ids, eos_id=tok.eos_id, pad_id=tok.pad_id, bos_id=tok.bos_id), f)
  return path


def model_json(preset: str) -> str:
  from jaxalign.models.transformer import PRESETS, model_config

  cfg = model_config(preset)
  return json.dumps(dict(vocab_size=cfg.vocab_size, d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                         n_kv_heads=cfg.n_kv_heads, d_ff=cfg.d_ff, norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
                         max_len=PRESETS[preset].get("max_len", 2048)))


def jaxalign_overrides(args, method: str, rms: list[str]) -> list[str]:
  n = args.warmup + args.steps
  out = [f"model.preset={args.preset}", "init_from=", f"train.steps={n}", f"train.batch_size={args.batch_size}",
         "train.log_every=1", f"train.checkpoint_every={n}", "eval.every=0", "eval.samples_per_prompt=1",
         f"seed={args.seed}"]
  if args.max_new_tokens > 24:
    out.append(f"data.completion_len={args.max_new_tokens}")
  if method in ("online_ipo", "nash_md"):
    out += ["online.annotator=reward_model", f"online.annotator_path={rms[0]}",
            f"online.max_new_tokens={args.max_new_tokens}"]
  else:
    paths = rms[:2] if method == "ppo2" else rms[:1]
    out += [f"ppo.reward_paths={','.join(paths)}", f"ppo.aggregation={'lsc' if len(paths) > 1 else 'raw_sum'}",
            "ppo.value=reward_model", f"ppo.epochs={args.ppo_epochs}", "ppo.minibatches=1",
            f"ppo.max_new_tokens={args.max_new_tokens}", "reward.ref_samples=2"]
  return out


def jaxalign_run(args, method: str, rms: list[str]) -> dict:
  runs = os.path.join(args.cache, "runs")
  os.makedirs(runs, exist_ok=True)
  workdir = tempfile.mkdtemp(prefix=f"{method}-", dir=runs)
  cmd = ppo_bench.jaxalign_cmd(CONFIGS[method], workdir, jaxalign_overrides(args, method, rms))
  rc, wall, ru = run_measured(cmd, workdir + ".log", env=ppo_bench.tree_env(REPO))
  if rc:
    raise SystemExit(f"jaxalign {method} failed (exit {rc}); log {workdir}.log:\n{ppo_bench.log_tail(workdir + '.log')}")
  rows = ppo_bench.read_iterations(os.path.join(workdir, "metrics.jsonl"))
  timed = rows[args.warmup:]
  if not timed:
    raise SystemExit(f"jaxalign {method}: no step after the {args.warmup} warm-up ones in {workdir}")
  med = lambda key: statistics.median(r[key] for r in timed)
  step = statistics.median(r["perf/rollout_time_s"] + r["perf/update_time_s"] for r in timed)
  online = method in ("online_ipo", "nash_md")
  samples = 2 if online else 1  # sequences sampled per prompt (Nash-MD: the learner's and the mixture's)
  gen = samples * args.batch_size * args.max_new_tokens  # fixed-shape decoding: every row runs every step
  out = dict(side="jaxalign", method=method, step_time_s=step, rollout_time_s=med("perf/rollout_time_s"),
             update_time_s=med("perf/update_time_s"), generated_tokens_per_step=gen,
             pairs_per_s=args.batch_size / step if online else None, rollouts_per_s=args.batch_size / step,
             rollout_tokens_per_s=gen / step, peak_rss_mb=ru["peak_rss_mb"], cpu_cores_used=ru["cpu_s"] / wall,
             wall_s=wall, loadavg_1m=os.getloadavg()[0], reward_models=len(rms[:2] if method == "ppo2" else rms[:1]),
             step_times=[r["perf/rollout_time_s"] + r["perf/update_time_s"] for r in rows],
             rollout_times=[r["perf/rollout_time_s"] for r in rows])
  shutil.rmtree(workdir, ignore_errors=True)
  os.remove(workdir + ".log")
  return out


def trl_run(args, method: str, prompts: str, model: str) -> dict:
  log = os.path.join(args.cache, f"trl-{method}.log")
  cmd = [args.trl_python, os.path.join(HERE, "trl_online_worker.py"), "--method", TRL_METHOD[method],
         "--prompts", prompts, "--model_json", model, "--batch_size", str(args.batch_size),
         "--max_new_tokens", str(args.max_new_tokens), "--steps", str(args.steps), "--warmup", str(args.warmup),
         "--seed", str(args.seed), "--ppo_epochs", str(args.ppo_epochs), "--ppo_minibatches", "1"]
  env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false"}
  rc, wall, ru = run_measured(cmd, log, env=env)
  if rc:
    raise SystemExit(f"TRL {method} failed (exit {rc}); log {log}:\n{ppo_bench.log_tail(log)}")
  with open(log) as f:
    line = [x for x in f.read().splitlines() if x.startswith("{")][-1]
  out = json.loads(line)
  out.update(method=method, wall_s=wall, peak_rss_mb=ru["peak_rss_mb"])
  return out


def medians(rs: list[dict]) -> dict:
  return {k: statistics.median(r[k] for r in rs) for k in KEYS
          if all(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) for r in rs)}


def check_trl(python: str) -> None:
  """One line, before any work, when `python` cannot import TRL's three online trainers."""
  code = ("import trl.experimental.online_dpo, trl.experimental.nash_md, trl.experimental.ppo")
  try:
    p = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1"})
    why = p.stderr.strip().splitlines()[-1] if p.returncode else ""
  except OSError as e:
    why = str(e)
  if why:
    raise SystemExit(f"TRL's OnlineDPO / NashMD / PPO trainers are not importable by {python} ({why}); install "
                     "trl==1.12.0 in its own venv (see this script's docstring) and pass --trl_python, or --skip_trl")


def compare(args) -> dict:
  if not args.skip_trl:
    check_trl(args.trl_python)
  rms = ppo_bench.reward_models(argparse.Namespace(cache=args.cache, preset=args.preset, rm_steps=args.rm_steps),
                                [REPO]).split(",")
  prompts, model = prompts_file(args), model_json(args.preset)
  out = dict(cpu_model=ppo_bench.cpu_model(), cpu_count=os.cpu_count(), git_rev=ppo_bench.describe(REPO),
             workload={k: v for k, v in vars(args).items() if k not in ("json", "out")}, methods={})
  for method in args.methods:
    runs = {"trl": [], "jaxalign": []}
    for _ in range(args.rounds):
      if not args.skip_trl:
        runs["trl"].append(trl_run(args, method, prompts, model))
      runs["jaxalign"].append(jaxalign_run(args, method, rms))
    med = {side: medians(rs) for side, rs in runs.items() if rs}
    entry = dict(**med, runs=runs)
    if "trl" in med:
      entry["ratio"] = {k: med["jaxalign"][k] / med["trl"][k] for k in
                        ("pairs_per_s", "rollouts_per_s", "rollout_tokens_per_s", "peak_rss_mb")
                        if med["trl"].get(k) and med["jaxalign"].get(k)}
      entry["ratio"]["step_time_s"] = med["trl"]["step_time_s"] / med["jaxalign"]["step_time_s"]
      entry["ratio"]["rollout_time_s"] = med["trl"]["rollout_time_s"] / med["jaxalign"]["rollout_time_s"]
      entry["ratio"]["update_time_s"] = med["trl"]["update_time_s"] / med["jaxalign"]["update_time_s"]
    out["methods"][method] = entry
  return out


def print_table(out: dict) -> None:
  w = out["workload"]
  print(f"{out['cpu_model']} ({out['cpu_count']} cores), jaxalign {out['git_rev']}")
  print(f"preset {w['preset']}, {w['batch_size']} prompts per step, {w['max_new_tokens']} new tokens, "
        f"{w['steps']} timed steps after {w['warmup']}, {w['rounds']} round(s); medians")
  fmt = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"
  cols = ("step_time_s", "rollout_time_s", "update_time_s", "pairs_per_s", "rollout_tokens_per_s", "peak_rss_mb")
  print(f"{'method':<11}{'side':<10}" + "".join(f"{c:>22}" for c in cols))
  for m, e in out["methods"].items():
    for side in ("trl", "jaxalign"):
      if side in e:
        print(f"{m:<11}{side:<10}" + "".join(f"{fmt(e[side].get(c)):>22}" for c in cols))
    if "ratio" in e:
      r = e["ratio"]
      print(f"{m:<11}{'ratio':<10}" + "".join(f"{fmt(r.get(c)):>22}" for c in cols)
            + "   (times: TRL / jaxalign; rates and RSS: jaxalign / TRL)")


def main(argv=None):
  args = parse_args(argv)
  out = compare(args)
  path = args.out or os.path.join(args.cache, "online.json")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(out, f, indent=1)
  if args.json:
    print(json.dumps(out))
  else:
    print_table(out)
    print(f"results: {path}")


if __name__ == "__main__":
  main()
