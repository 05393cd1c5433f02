"""The CLI end to end: tiny DPO from nothing, SIGKILL + resume == uninterrupted, one-line errors."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cmd(workdir, *overrides, config="configs/dpo.py:tiny"):
  return [sys.executable, "-m", "jaxalign.main", f"--config={config}", f"--workdir={workdir}", *overrides]


def _run(workdir, *overrides, config="configs/dpo.py:tiny", check=True):
  env = {**os.environ, "PYTHONPATH": ROOT}
  p = subprocess.run(_cmd(workdir, *overrides, config=config), cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=600)
  if check:
    assert p.returncode == 0, p.stderr[-3000:]
  return p


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _comparable(rows):
  return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("dpo_full"))
  p = _run(wd)
  return wd, p


def test_tiny_dpo_from_nothing(uninterrupted):
  wd, p = uninterrupted
  final = json.loads(p.stdout[p.stdout.index("{"):])
  assert final["step"] == 6
  for k in ("eval/win_rate", "eval/gt_reward", "eval/kl", "eval/valid", "eval/reference_valid"):
    assert k in final, k
  rows = _rows(wd)
  train = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
  for r in train:
    for k in ("train/rewards/accuracies", "train/rewards/margins", "train/logps/chosen", "perf/compile_time_s"):
      assert k in r
  for r in train[1:]:  # step 1 includes compilation, so throughput starts at step 2
    assert r["perf/tokens_per_s"] > 0 and 0 < r["perf/mfu"] < 1 and r["perf/step_time_s"] > 0
  assert abs(train[0]["train/loss"] - 0.6931) < 1e-3  # policy == reference at step 0: log 2
  assert os.path.exists(os.path.join(wd, "config.json"))
  assert sorted(os.listdir(os.path.join(wd, "checkpoints")))[-1] == "6"
  assert os.path.exists(os.path.join(wd, "sft", "checkpoints", "40"))
  assert any(f.startswith("ref_logps-") for f in os.listdir(os.path.join(wd, "ref_cache")))
  assert any(f.startswith("events") for f in os.listdir(os.path.join(wd, "tb")))
  # rerunning a finished run does nothing and reports the same metrics
  again = _run(wd)
  assert json.loads(again.stdout[again.stdout.index("{"):]) == final
  assert _rows(wd) == rows


def _kill_when(workdir, metrics_file, min_step, tmp_log):
  env = {**os.environ, "PYTHONPATH": ROOT}
  with open(tmp_log, "w") as log:
    proc = subprocess.Popen(_cmd(workdir), cwd=ROOT, env=env, stdout=log, stderr=log)
    path = os.path.join(workdir, metrics_file)
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
      if os.path.exists(path):
        with open(path) as f:
          steps = [json.loads(l)["step"] for l in f if l.strip().endswith("}")]
        if steps and max(steps) >= min_step:
          break
      time.sleep(0.05)
    assert proc.poll() is None, "finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("where,metrics_file,min_step", [("sft", "sft/metrics.jsonl", 20),
                                                         ("dpo", "metrics.jsonl", 4)])
def test_sigkill_then_resume_matches_uninterrupted(uninterrupted, tmp_path, where, metrics_file, min_step):
  wd = str(tmp_path / "run")
  _kill_when(wd, metrics_file, min_step, str(tmp_path / "killed.log"))
  _run(wd)
  full_wd, _ = uninterrupted
  for sub in ("sft", ""):
    a = _comparable(_rows(os.path.join(wd, sub)))
    b = _comparable(_rows(os.path.join(full_wd, sub)))
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
      assert ra.keys() == rb.keys()
      for k in ra:
        assert ra[k] == pytest.approx(rb[k], rel=1e-5, abs=1e-6), (sub, ra["step"], k)


@pytest.mark.parametrize("overrides,config,expected", [
    (["--config.loss.name=dpx"], "configs/dpo.py:tiny", "error: config loss.name: unknown loss 'dpx'"),
    (["--config.train.stpes=3"], "configs/dpo.py:tiny", "error: "),
    (["--config.data.source=jsonl", "--config.data.path=/nonexistent/train.jsonl",
      "--config.data.tokenizer=/nonexistent/sp.model"], "configs/dpo.py:tiny", "error: /nonexistent/sp.model"),
    (["--config.data.prompt_len=500"], "configs/dpo.py:tiny", "error: config data.prompt_len + data.completion_len"),
    ([], "configs/nope.py", "error: "),
    (["--config.mesh.data=3"], "configs/sft.py:tiny", "error: mesh: sizes data=3"),
])
def test_bad_input_is_one_line_error(tmp_path, overrides, config, expected):
  p = _run(str(tmp_path / "wd"), *overrides, config=config, check=False)
  assert p.returncode == 2, p.stderr[-2000:]
  lines = [l for l in p.stderr.splitlines() if l.strip() and not l.startswith("WARNING")]
  assert len(lines) == 1 and lines[0].startswith(expected), p.stderr[-2000:]
  assert "Traceback" not in p.stderr


def test_malformed_jsonl_line_names_file_line_field(tmp_path):
  from jaxalign.data import builtin
  builtin.builtin_tokenizer(str(tmp_path))
  data = tmp_path / "train.jsonl"
  good = json.dumps({"prompt": "review of the phone in paris :", "chosen": "the screen is good .",
                     "rejected": "the screen is poor ."})
  data.write_text("\n".join([good] * 16 + ['{"prompt": "x", "rejected": "y"}']) + "\n")
  p = _run(str(tmp_path / "wd"), "--config.data.source=jsonl", f"--config.data.path={data}",
           f"--config.data.tokenizer={tmp_path / 'builtin_sp.model'}", "--config.init_from=", check=False)
  assert p.returncode == 2
  assert p.stderr.strip().splitlines()[-1] == f'error: {data}:17: missing field "chosen"'


def test_default_job_quality(tmp_path):
  """The README's default job: win rate >= 0.70 against the SFT reference, validity within 5 points."""
  p = _run(str(tmp_path / "dpo"), config="configs/dpo.py")
  final = json.loads(p.stdout[p.stdout.index("{"):])
  assert final["step"] == 150
  assert final["eval/win_rate"] >= 0.70, final
  assert final["eval/valid"] >= final["eval/reference_valid"] - 0.05, final
  assert final["eval/reference_valid"] >= 0.85 and 0.0 < final["eval/kl"] < 20.0, final
