"""PPO iteration time (rollout and update) of a baseline git revision and the working tree, alternately.

  python experiments/bench/ppo.py --baseline 7f88eec --rounds 3
  python experiments/bench/ppo.py --baseline 7f88eec --current 7f88eec --rounds 1 --iters 3 --batch_size 16

The workload is `configs/ppo_transformed.py` (PPO on the built-in task, two reward models, LSC aggregation)
from a random-init policy of `--preset`. `--baseline REV` is checked out as a detached `git worktree` in a
temporary folder (removed at the end); the current side is this checkout (or `--current REV`, another
worktree). Each run is `python -m jaxalign.main` under this interpreter, with its cwd and PYTHONPATH on its tree,
in a fresh workdir, launched by a worker process of this script (`--worker`) whose only child it is, so the peak
RSS and CPU seconds are that run's own. Runs alternate baseline, current, `--rounds` times (this machine's speed
drifts from run to run).

Both sides get the same inputs: two reward models (properties sentiment and politeness, `configs/reward_model.py:tiny`
from random init, `--rm_steps` steps, the same preset), trained once with the current tree (with the baseline if
that fails) into `--cache` and reused by later invocations. Each side keeps its LSC r_ref cache (WORKDIR/lsc_cache)
in `--cache` too, so only a side's first run samples r_ref (`lsc_cache_hit`); r_ref is outside the timed iterations
either way.

Timings come from each run's metrics.jsonl (`log_every=1`): `perf/rollout_time_s` and `perf/update_time_s` per
iteration, the first `--warmup` iterations (compilation) dropped, medians per run, then medians over rounds. Other
`perf/*` keys a side logs (e.g. `perf/step_time_s`, `perf/tokens_per_s`, `perf/mfu`) are reported as `logged_*`.
Prints a table (or one JSON line, `--json`) and writes the JSON to `--out`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)

from _common import alternate, print_result  # noqa: E402  (imports no jax: the worker's RSS stays small)

RM_PROPERTIES = ("sentiment", "politeness")
SIDES = ("baseline", "current")
# What the table shows, per side and as current / baseline. The medians of alternate()'s SUMMARY_KEYS come too.
TABLE_KEYS = ("rollout_time_s", "update_time_s", "step_time_s", "tokens_per_s", "wall_s", "peak_rss_mb",
              "cpu_cores_used", "loadavg_1m")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--baseline", default="7f88eec", help="git revision of the baseline side")
  p.add_argument("--current", default="", help="git revision of the current side (default: this working tree)")
  p.add_argument("--rounds", type=int, default=1, help="baseline, current alternations (medians reported)")
  p.add_argument("--iters", type=int, default=8, help="timed PPO iterations per run")
  p.add_argument("--warmup", type=int, default=2, help="iterations dropped first (compilation)")
  p.add_argument("--preset", default="tiny", help="model.preset of the policy and the reward models")
  p.add_argument("--batch_size", type=int, default=32, help="train.batch_size: rollouts per iteration")
  p.add_argument("--max_new_tokens", type=int, default=0,
                 help="ppo.max_new_tokens (0: data.completion_len, 24); above 24 data.completion_len follows")
  p.add_argument("--ref_samples", type=int, default=2, help="reward.ref_samples: LSC r_ref samples per prompt")
  p.add_argument("--rm_steps", type=int, default=30, help="training steps of each reward model")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="extra config override for both sides' PPO runs (--config.KEY=VALUE), repeatable")
  p.add_argument("--cache", default="/tmp/jaxalign-bench-ppo", help="reward models, LSC caches, run folders")
  p.add_argument("--out", default=None, help="JSON results (default: CACHE/ppo.json)")
  p.add_argument("--keep_runs", action="store_true", help="keep each run's workdir (CACHE/runs/...)")
  p.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
  # Worker: one run of one tree; prints one JSON line.
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--tree", help=argparse.SUPPRESS)
  p.add_argument("--side", help=argparse.SUPPRESS)
  p.add_argument("--reward_paths", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.iters < 1 or args.warmup < 0 or args.rounds < 1:
    p.error("--iters and --rounds must be >= 1, --warmup >= 0")
  return args


# ---- running jaxalign from a tree ----

def tree_env(tree: str) -> dict:
  """This environment with `tree` first on PYTHONPATH and no persistent compilation cache (both sides compile)."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
  env["PYTHONPATH"] = tree
  return env


def jaxalign_cmd(config: str, workdir: str, overrides: list[str]) -> list[str]:
  return [sys.executable, "-m", "jaxalign.main", f"--config={config}", f"--workdir={workdir}",
          *(f"--config.{o}" for o in overrides)]


def run_logged(cmd: list[str], tree: str, log: str) -> int:
  """Runs `cmd` in `tree` with its output in `log`; returns the exit status."""
  with open(log, "w") as f:
    return subprocess.run(cmd, cwd=tree, env=tree_env(tree), stdout=f, stderr=subprocess.STDOUT).returncode


def log_tail(log: str, n: int = 4000) -> str:
  with open(log, errors="replace") as f:
    return f.read().replace("\r", "\n")[-n:]


def ppo_overrides(args, reward_paths: str) -> list[str]:
  """The PPO run both sides make (`--config.` overrides of configs/ppo_transformed.py)."""
  steps = args.warmup + args.iters
  out = [f"model.preset={args.preset}", "init_from=", f"ppo.reward_paths={reward_paths}", "ppo.aggregation=lsc",
         f"train.steps={steps}", f"train.batch_size={args.batch_size}", "train.log_every=1",
         f"train.checkpoint_every={steps}",  # the final checkpoint only, after the timed iterations
         "eval.every=0", "eval.samples_per_prompt=1",  # the evaluator runs once, at the end (untimed)
         f"reward.ref_samples={args.ref_samples}", f"ppo.max_new_tokens={args.max_new_tokens}"]
  if args.max_new_tokens > 24:
    out.append(f"data.completion_len={args.max_new_tokens}")
  return out + list(args.set)


def read_iterations(metrics_path: str) -> list[dict]:
  """The per-iteration rows of a PPO run's metrics.jsonl (the evaluator's rows carry no perf/ keys)."""
  with open(metrics_path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return sorted((r for r in rows if "perf/rollout_time_s" in r), key=lambda r: r["step"])


def worker(args) -> dict:
  """One PPO run of `args.tree` in a fresh workdir; medians of its timed iterations."""
  runs_dir = os.path.join(args.cache, "runs")
  os.makedirs(runs_dir, exist_ok=True)
  workdir = tempfile.mkdtemp(prefix=f"{args.side}-", dir=runs_dir)
  # The side's LSC r_ref cache: its file names are keys of everything r_ref depends on.
  shared_lsc = os.path.join(args.cache, f"lsc_cache-{args.side}")
  lsc_hit = os.path.isdir(shared_lsc) and bool(os.listdir(shared_lsc))
  if lsc_hit:
    shutil.copytree(shared_lsc, os.path.join(workdir, "lsc_cache"))
  log = workdir + ".log"
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  t0 = time.perf_counter()
  rc = run_logged(jaxalign_cmd("configs/ppo_transformed.py", workdir, ppo_overrides(args, args.reward_paths)),
                  args.tree, log)
  wall = time.perf_counter() - t0
  after = resource.getrusage(resource.RUSAGE_CHILDREN)  # this worker's only child: its peak is the run's
  if rc:
    raise SystemExit(f"{args.side}: jaxalign.main failed (exit {rc}) in {args.tree}; log {log}:\n{log_tail(log)}")
  rows = read_iterations(os.path.join(workdir, "metrics.jsonl"))
  timed = rows[args.warmup:]
  if not timed:
    raise SystemExit(f"{args.side}: no iteration after the {args.warmup} warm-up ones in {workdir}")
  if os.path.isdir(os.path.join(workdir, "lsc_cache")):
    shutil.copytree(os.path.join(workdir, "lsc_cache"), shared_lsc, dirs_exist_ok=True)
  with open(os.path.join(workdir, "config.json")) as f:
    c = json.load(f)
  new_tokens = int(c["ppo"]["max_new_tokens"]) or int(c["data"]["completion_len"])
  tokens = int(c["train"]["batch_size"]) * (int(c["data"]["prompt_len"]) + new_tokens)

  med = lambda key: statistics.median(r[key] for r in timed)
  step = statistics.median(r["perf/rollout_time_s"] + r["perf/update_time_s"] for r in timed)
  logged = {f"logged_{k[len('perf/'):]}": med(k) for k in timed[0]
            if k.startswith("perf/") and k not in ("perf/rollout_time_s", "perf/update_time_s")
            and all(k in r for r in timed)}
  out = dict(
      side=args.side, tree=args.tree, iterations=len(timed), warmup=args.warmup,
      rollout_time_s=med("perf/rollout_time_s"), update_time_s=med("perf/update_time_s"), step_time_s=step,
      tokens_per_step=tokens, tokens_per_s=tokens / step, mfu=logged.get("logged_mfu", math.nan),
      wall_s=wall, peak_rss_mb=after.ru_maxrss / 1024.0,
      cpu_cores_used=(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / wall,
      loadavg_1m=os.getloadavg()[0], lsc_cache_hit=lsc_hit, step_compiles=None, **logged,
      rollout_times=[r["perf/rollout_time_s"] for r in rows], update_times=[r["perf/update_time_s"] for r in rows])
  if args.keep_runs:
    out["workdir"] = workdir
  else:
    shutil.rmtree(workdir, ignore_errors=True)
    os.remove(log)
  return out


# ---- the comparison ----

def git(*cmd: str) -> str:
  return subprocess.run(["git", "-C", REPO, *cmd], capture_output=True, text=True, check=True).stdout.strip()


def add_worktree(rev: str, tmp: str, name: str) -> str:
  path = os.path.join(tmp, name)
  git("worktree", "add", "--detach", "--quiet", path, rev)
  return path


def describe(tree: str) -> str:
  """Short commit of a tree, `+dirty` when its tracked files differ from it."""
  rev = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                       check=True).stdout.strip()
  dirty = subprocess.run(["git", "-C", tree, "diff", "--quiet", "HEAD"]).returncode != 0
  return rev + ("+dirty" if dirty else "")


def check_import(tree: str) -> None:
  """Fails unless `import jaxalign` in `tree`'s environment finds the tree's own package (not the editable one)."""
  p = subprocess.run([sys.executable, "-c", "import jaxalign; print(jaxalign.__file__)"], cwd=tree,
                     env=tree_env(tree), capture_output=True, text=True)
  found = p.stdout.strip()
  if p.returncode or not os.path.abspath(found).startswith(os.path.abspath(tree) + os.sep):
    raise SystemExit(f"import jaxalign in {tree} gives {found or p.stderr.strip()[-500:]!r}, not the tree's own")


def reward_models(args, trees: list[str]) -> str:
  """Trains (once, into --cache) the two reward models with the first tree that can; their paths, comma-joined."""
  paths = []
  for prop in RM_PROPERTIES:
    d = os.path.join(args.cache, f"rm_{prop}_{args.preset}_{args.rm_steps}")
    done = os.path.join(d, "bench_done")
    for tree in trees:
      if os.path.exists(done):
        break
      shutil.rmtree(d, ignore_errors=True)
      os.makedirs(args.cache, exist_ok=True)
      print(f"training reward model {prop} ({args.preset}, {args.rm_steps} steps) with {tree}", file=sys.stderr)
      log = d + ".log"
      rc = run_logged(jaxalign_cmd("configs/reward_model.py:tiny", d, [
          f"model.preset={args.preset}", "init_from=", f"reward.property={prop}", f"train.steps={args.rm_steps}",
          "eval.every=0", f"train.checkpoint_every={args.rm_steps}"]), tree, log)
      if rc == 0:
        open(done, "w").close()
      else:
        print(f"  failed (exit {rc}), log {log}:\n{log_tail(log, 1500)}", file=sys.stderr)
    if not os.path.exists(done):
      raise SystemExit(f"could not train the {prop} reward model with {', '.join(trees)}")
    paths.append(d)
  return ",".join(paths)


def cpu_model() -> str:
  """lscpu's "Model name" (else /proc/cpuinfo's "model name")."""
  try:
    text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    prefix = "Model name:"
  except OSError:
    text, prefix = open("/proc/cpuinfo").read(), "model name"
  return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith(prefix)), "unknown")


def forwarded_flags(args) -> list[str]:
  """The workload flags a worker needs, as given to this invocation."""
  out = ["--iters", str(args.iters), "--warmup", str(args.warmup), "--preset", args.preset,
         "--batch_size", str(args.batch_size), "--max_new_tokens", str(args.max_new_tokens),
         "--ref_samples", str(args.ref_samples), "--cache", args.cache]
  for s in args.set:
    out += ["--set", s]
  return out + ["--keep_runs"] * args.keep_runs


def compare(args, trees: dict, revs: dict) -> dict:
  for tree in dict.fromkeys(trees.values()):
    check_import(tree)
  rm = reward_models(args, [trees["current"], trees["baseline"]])
  cmds = {side: [sys.executable, os.path.abspath(__file__), "--worker", "--side", side, "--tree", trees[side],
                 "--reward_paths", rm, *forwarded_flags(args)] for side in SIDES}
  res = alternate("baseline", cmds["baseline"], cmds["current"], args.rounds)
  runs = {"baseline": res["runs"]["baseline"], "current": res["runs"]["jaxalign"]}
  med = {}
  for side, rs in runs.items():
    keys = [k for k, v in rs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and k not in ("iterations", "warmup", "step_compiles")]
    med[side] = {k: statistics.median(r[k] for r in rs) for k in keys if all(k in r for r in rs)}
  ratio = {f"ratio_{k}": med["current"][k] / med["baseline"][k]
           for k in (*TABLE_KEYS, *sorted(k for k in med["current"] if k.startswith("logged_")))
           if k in med["baseline"] and k in med["current"] and med["baseline"][k]}
  return dict(cpu_model=cpu_model(), cpu_count=os.cpu_count(), baseline_rev=revs["baseline"],
              current_rev=revs["current"], reward_models=rm,
              workload={k: v for k, v in vars(args).items()
                        if k not in ("worker", "tree", "side", "reward_paths", "json", "out")},
              **ratio, baseline=med["baseline"], current=med["current"], runs=runs)


def print_table(out: dict) -> None:
  print_result({k: out[k] for k in ("cpu_model", "cpu_count", "baseline_rev", "current_rev")}, False)
  w = out["workload"]
  print(f"workload  preset {w['preset']}, batch {w['batch_size']}, max_new_tokens {w['max_new_tokens'] or 24}, "
        f"{w['iters']} timed iterations after {w['warmup']}, {w['rounds']} round(s); medians")
  keys = [k for k in (*TABLE_KEYS, *sorted(out["current"])) if k in out["baseline"] or k in out["current"]]
  keys = [k for k in dict.fromkeys(keys) if k in TABLE_KEYS or k.startswith("logged_")]
  fmt = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"
  print(f"{'':<22}{'baseline':>12}{'current':>12}{'cur/base':>10}")
  for k in keys:
    print(f"{k:<22}{fmt(out['baseline'].get(k)):>12}{fmt(out['current'].get(k)):>12}"
          f"{fmt(out.get(f'ratio_{k}')):>10}")
  for side in SIDES:
    for i, r in enumerate(out["runs"][side]):
      print(f"{side} run {i}: rollout s " + " ".join(f"{t:.2f}" for t in r["rollout_times"]) +
            " | update s " + " ".join(f"{t:.2f}" for t in r["update_times"]) +
            f" | lsc cache {'hit' if r['lsc_cache_hit'] else 'computed'}")


def _finite(v):
  """NaN (a key a side does not log) as JSON null."""
  if isinstance(v, float) and math.isnan(v):
    return None
  if isinstance(v, dict):
    return {k: _finite(x) for k, x in v.items()}
  if isinstance(v, list):
    return [_finite(x) for x in v]
  return v


def main(argv=None):
  args = parse_args(argv)
  args.cache = os.path.abspath(args.cache)
  if args.worker:
    print(json.dumps(worker(args)))
    return
  tmp = tempfile.mkdtemp(prefix="jaxalign-bench-ppo-trees-")
  trees = {}
  try:
    trees["baseline"] = add_worktree(args.baseline, tmp, "baseline")
    trees["current"] = add_worktree(args.current, tmp, "current") if args.current else REPO
    revs = {side: describe(tree) for side, tree in trees.items()}
    out = _finite(compare(args, trees, revs))
  finally:
    for side, tree in trees.items():
      if tree != REPO:
        git("worktree", "remove", "--force", tree)
    shutil.rmtree(tmp, ignore_errors=True)
  path = args.out or os.path.join(args.cache, "ppo.json")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(out, f, indent=1)
  if args.json:
    print_result(out, True)
  else:
    print_table(out)
    print(f"results: {path}")


if __name__ == "__main__":
  main()
