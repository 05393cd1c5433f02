"""RLTHF from the command line: `python -m jaxalign.rlthf --config=configs/rlthf.py --workdir=DIR`.

The loop itself is `jaxalign.trainers.rlthf` (trainer "rlthf"); this runs it with `jaxalign.main`'s flags,
one-line errors and resumption (a killed run, or one stopped to wait for human annotations, continues with the
same command). Any config works: its trainer is set to "rlthf", its `loss` and `train` sections are the downstream
DPO run's, `rlthf.*` the loop's.
"""

from __future__ import annotations

import sys


def main(argv=None) -> None:
  import runpy
  # `jaxalign.main` as the program itself: ml_collections only accepts `--config.*` overrides for a config flag
  # defined by the main module.
  sys.argv = [*(sys.argv if argv is None else argv), "--config.trainer=rlthf"]
  runpy.run_module("jaxalign.main", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main()
