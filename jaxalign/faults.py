"""Fault injection for the reliability tests: `JAXALIGN_FAULT=POINT[@STEP]` SIGKILLs the process there.

Points: `step@S` (step S dispatched, not finished), `checkpoint@S` (checkpoint S being written: the
write has started and not completed), `eval@S` (evaluation S: its metrics row written, its samples
not), `ref_cache` (a cache file half written, before its rename). Unset (the default) this costs one
dictionary lookup per call; nothing else in jaxalign reads it.
"""

from __future__ import annotations

import os
import signal
import time

ENV = "JAXALIGN_FAULT"


def armed(name: str, step: int | None = None) -> bool:
  spec = os.environ.get(ENV, "")
  if not spec:
    return False
  point, _, at = spec.partition("@")
  return point == name and (not at or step is None or int(at) == int(step))


def kill() -> None:
  os.kill(os.getpid(), signal.SIGKILL)
  time.sleep(60)  # (not reached)


def point(name: str, step: int | None = None, *, f=None) -> None:
  """SIGKILLs this process when `JAXALIGN_FAULT` names this point (and step). `f`: an open file being
  written, cut to half its length first (a write killed half way)."""
  if not armed(name, step):
    return
  if f is not None:
    f.flush()
    f.truncate(max(1, f.tell() // 2))
    f.flush()
    os.fsync(f.fileno())
  kill()


def kill_during_checkpoint(directory: str, step: int, timeout: float = 30.0) -> None:
  """`checkpoint@S`: waits until orbax has started writing step S's temporary folder, then SIGKILLs."""
  if not armed("checkpoint", step):
    return
  deadline = time.time() + timeout
  while time.time() < deadline:
    names = os.listdir(directory) if os.path.isdir(directory) else []
    tmp = [n for n in names if n.startswith(f"{step}.") and "tmp" in n]
    if tmp and any(files for _, _, files in os.walk(os.path.join(directory, tmp[0]))):
      break
    time.sleep(0.001)
  kill()
