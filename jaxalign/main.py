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
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")


def _fail(message: str, code: int = 2):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def train(config, workdir: str) -> dict:
  """Runs the trainer named by `config.trainer` and returns the final metrics."""
  from jaxalign.trainers import loop, offline, sft
  trainers = {"sft": sft.train, "offline": offline.train}
  if config.trainer not in trainers:
    from jaxalign.errors import UserError
    raise UserError(f"config trainer: unknown trainer {config.trainer!r}; choose from {sorted(trainers)}")
  trainers[config.trainer](config, workdir)
  return loop.final_metrics(workdir)


def main(argv=None) -> None:
  argv = list(sys.argv if argv is None else argv)
  try:
    flags.FLAGS(argv)
  except flags.Error as e:  # unknown flag, bad --config.x override, missing config file
    _fail(str(e).splitlines()[0])
  except (FileNotFoundError, AttributeError, KeyError, ValueError, TypeError) as e:
    _fail(str(e).splitlines()[0] if str(e) else repr(e))
  if _CONFIG.value is None or not _WORKDIR.value:
    _fail("both --config=configs/<name>.py and --workdir=DIR are required")
  import jax
  from jaxalign.errors import UserError
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  workdir = os.path.abspath(_WORKDIR.value)
  try:
    final = train(_CONFIG.value, workdir)
  except UserError as e:
    _fail(str(e))
  except KeyboardInterrupt:
    _fail("interrupted; rerun the same command to resume from the last checkpoint", 130)
  if jax.process_index() == 0:
    keys = sorted(k for k in final if k.startswith("eval/")) or sorted(k for k in final if k != "step")
    print(json.dumps({"step": final.get("step"), **{k: final[k] for k in keys}}, indent=1))


if __name__ == "__main__":
  main()
