"""Entry point: `python -m jaxalign.main --config=configs/<name>.py[:variant] --workdir=DIR`.

Parses flags, sets up jax (and `jax.distributed` on multi-host), dispatches on
`config.trainer`, and prints the final metrics. User errors exit with status 2 and
one line on stderr; nothing already written is touched.
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file, e.g. configs/dpo.py[:tiny].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (created; an existing run there is resumed).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host); "
                                  "on managed clusters (TPU pods, SLURM) nothing else is needed.")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0 (with --distributed, by hand).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator).")


def _fail(message: str, code: int = 2):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def _one_line(text: str) -> str:
  text = text.replace("\\n", "\n").replace("\\'", "'")  # ml_collections nests reprs
  lines = [line.strip().strip("'") for line in text.splitlines() if line.strip()]
  if any(line.startswith("Traceback") for line in lines):  # an exception inside get_config()
    lines = [lines[0].split(":")[0] + ":", lines[-1]]
  return " ".join(lines)[:500]


def quiet_background_failures() -> None:
  """One line, not pages: orbax logs a failed asynchronous checkpoint write from its threads with tracebacks,
  and tensorstore's callbacks for the abandoned I/O land on a closed event loop (more tracebacks). The failure
  itself reaches the main thread as an exception, which is reported once as `error:`; this drops the echoes."""
  import logging

  class _NoOrbaxErrors(logging.Filter):
    def filter(self, record):
      if record.levelno == logging.WARNING and record.getMessage().startswith("Metadata file does not exist"):
        return False  # orbax restoring a checkpoint saved without its optional metadata file: harmless
      if record.levelno < logging.ERROR:
        return True
      text = f"{record.pathname or ''} {record.getMessage()}"  # (asyncio: "Task exception was never retrieved
      return "orbax" not in text  # ... coro=<async_serialize_from_host() ... orbax/...>", when a task is collected)
  for name in ("absl", "asyncio"):
    logging.getLogger(name).addFilter(_NoOrbaxErrors())

  def echo(exc) -> bool:
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"

  hook, unraisable = sys.excepthook, sys.unraisablehook

  def excepthook(kind, exc, tb):
    if not echo(exc):
      hook(kind, exc, tb)

  def unraisablehook(u):
    code = getattr(u.object, "cr_code", None)
    if not (echo(u.exc_value) or (code is not None and "orbax" in code.co_filename)):
      unraisable(u)
  sys.excepthook, sys.unraisablehook = excepthook, unraisablehook


def train(config, workdir: str) -> dict:
  """Runs the trainer named by `config.trainer` and returns the final metrics."""
  from jaxalign import trainers
  from jaxalign.trainers import loop
  trainers.train(config, workdir)  # (`jaxalign.trainers.TRAINERS`)
  return loop.final_metrics(workdir)


def main(argv=None) -> None:
  argv = list(sys.argv if argv is None else argv)
  try:
    flags.FLAGS(argv)
  except flags.Error as e:  # unknown flag, bad --config.x override, broken config file
    _fail(_one_line(str(e)))
  except (FileNotFoundError, AttributeError, KeyError, ValueError, TypeError) as e:
    inner = e.args[0] if e.args else e
    text = str(inner.args[0]) if isinstance(inner, KeyError) and inner.args else str(inner)
    first, _, hint = text.partition("\n")  # ml_collections: "'tmperature'\nDid you mean "temperature" ...?"
    key = first.strip().strip("'\"")
    flag = next((a.split("=", 1)[0] for a in argv if a.startswith("--config.") and
                 key in a.split("=", 1)[0].split(".")), None) if isinstance(e, (KeyError, AttributeError)) else None
    if flag:  # an override of a key the config does not have (a typo)
      _fail(f"{flag}: no such config key {key!r}" + (f" ({hint.strip()})" if hint.strip() else " (misspelt?)"))
    _fail("config: " + _one_line(text))
  import ml_collections
  config = _CONFIG.value
  if config is not None and not isinstance(config, ml_collections.ConfigDict):
    # config_flags defers a failed file load to first use; report it here, in one line.
    path = next((a.split("=", 1)[1].split(":")[0] for a in argv if a.startswith("--config=")), "?")
    _fail(f"{path}: config file not found" if not os.path.exists(path) else f"{path}: could not load config")
  if config is None or not _WORKDIR.value:
    _fail("both --config=configs/<name>.py and --workdir=DIR are required")
  import jaxalign
  jaxalign.set_xla_cpu_flags()  # before jax starts its backend
  import jax
  from jaxalign.errors import UserError
  if _DISTRIBUTED.value:
    if _COORDINATOR.value:  # by hand (not a managed cluster): CPU processes need gloo for collectives
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
  workdir = os.path.abspath(_WORKDIR.value)
  quiet_background_failures()
  try:
    final = train(config, workdir)
  except UserError as e:
    _fail(str(e))
  except KeyboardInterrupt:
    _fail("interrupted; rerun the same command to resume from the last checkpoint", 130)
  except OSError as e:  # a full disk, a file removed under the run, permissions changed mid-run
    _fail(f"{e.filename or workdir}: {e.strerror or e}; stopped (checkpoints already written are intact: "
          "rerun the same command to resume)")
  if jax.process_index() == 0:
    keys = sorted(k for k in final if k.startswith("eval/")) or sorted(k for k in final if k != "step")
    print(json.dumps({"step": final.get("step"), **{k: final[k] for k in keys}}, indent=1))


if __name__ == "__main__":
  main()
