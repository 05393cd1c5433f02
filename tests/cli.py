"""Helpers for tests that drive the CLI in subprocesses (a real process, so SIGKILL is real)."""

import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cmd(workdir, *overrides, config="configs/dpo.py:tiny"):
  return [sys.executable, "-m", "jaxalign.main", f"--config={config}", f"--workdir={workdir}", *overrides]


def run(workdir, *overrides, config="configs/dpo.py:tiny", check=True):
  env = {**os.environ, "PYTHONPATH": ROOT}
  env.pop("JAXALIGN_FAULT", None)
  p = subprocess.run(cmd(workdir, *overrides, config=config), cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=600)
  if check:
    assert p.returncode == 0, p.stderr[-3000:]
  return p


def final(p) -> dict:
  """The final metrics JSON that `jaxalign.main` prints on stdout."""
  return json.loads(p.stdout[p.stdout.index("{"):])


def rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def comparable(rs):
  return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rs]


def killed_at(command, fault, log_path):
  """Runs `command` with `JAXALIGN_FAULT=fault` (see `jaxalign.faults`); asserts it died by SIGKILL there."""
  env = {**os.environ, "PYTHONPATH": ROOT, "JAXALIGN_FAULT": fault}
  with open(log_path, "w") as log:
    p = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=log, timeout=600)
  assert p.returncode == -signal.SIGKILL, (fault, p.returncode, open(log_path).read()[-3000:])


def kill_when(command, workdir, metrics_file, min_step, log_path, during=None):
  """Starts `command`, SIGKILLs it once `metrics_file` (relative to workdir) logs step >= min_step.

  during(proc): called just before the kill, while the run is alive (e.g. to start a second run)."""
  env = {**os.environ, "PYTHONPATH": ROOT}
  with open(log_path, "w") as log:
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
    path = os.path.join(workdir, metrics_file)
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
      if os.path.exists(path):
        with open(path) as f:
          steps = [json.loads(l)["step"] for l in f if l.strip().endswith("}")]
        if steps and max(steps) >= min_step:
          break
      time.sleep(0.02)
    assert proc.poll() is None, "finished before it could be killed"
    if during is not None:
      during(proc)
      assert proc.poll() is None, "finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def assert_same_rows(a, b, where=""):
  a, b = comparable(a), comparable(b)
  assert [r["step"] for r in a] == [r["step"] for r in b]
  for ra, rb in zip(a, b):
    assert ra.keys() == rb.keys()
    for k in ra:
      assert abs(ra[k] - rb[k]) <= 1e-5 * abs(rb[k]) + 1e-6, (where, ra["step"], k, ra[k], rb[k])


def error_line(p) -> str:
  """The one `error:` line of a failed CLI run (exit 2, no traceback, nothing else but warnings)."""
  assert p.returncode == 2, (p.returncode, p.stderr[-3000:])
  assert "Traceback" not in p.stderr, p.stderr[-3000:]
  lines = [l for l in p.stderr.splitlines()  # (warnings and notes that came before it are not errors)
           if l.strip() and not l.startswith(("WARNING", "W1", "I1", "E1", "warning: ", "note: ", "step "))
           and "%|" not in l]  # (nor are progress bars and the evaluation lines)
  assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr[-3000:]
  return lines[0]
