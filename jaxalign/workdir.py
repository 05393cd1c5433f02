"""The run directory: checked before anything is written, and held by one live run at a time.

`hold(workdir)` makes the directory (or checks an existing one is a writable directory) and
takes `WORKDIR/.lock` with `fcntl.flock`, writing the holder's host and pid into it. The kernel
drops the lock when the holding process exits, however it exits (SIGKILL included), so a lock
left by a killed run is simply taken over; a second process started while the run is alive is
refused with one line naming the holder. On file systems without `flock` the lock falls back to
the recorded pid (alive on this host: refused). In a multi-process run only process 0 holds it.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time

from jaxalign.errors import UserError

LOCK = ".lock"
_held: dict[str, int] = {}  # realpath -> fd, for this process


def check_writable(workdir: str) -> str:
  """Creates `workdir` if needed; a one-line UserError when it is a file or cannot be written."""
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(f"{path}: exists and is not a directory (--workdir must be a directory)")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise UserError(f"{path}: cannot create the run directory ({e.strerror or e})") from None
  if not os.access(path, os.W_OK | os.X_OK):
    raise UserError(f"{path}: the run directory is not writable")
  return path


def _holder(fd: int) -> dict:
  try:
    os.lseek(fd, 0, os.SEEK_SET)
    return json.loads(os.read(fd, 4096).decode() or "{}")
  except (OSError, ValueError):
    return {}


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _describe(h: dict) -> str:
  since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["since"])) if "since" in h else "?"
  return f"host {h.get('host', '?')}, pid {h.get('pid', '?')}, since {since}"


def hold(workdir: str) -> str:
  """Checks and locks `workdir` for this process (idempotent); returns its absolute path.

  Raises a one-line UserError when the directory is unusable or another live run holds it.
  """
  path = check_writable(workdir)
  real = os.path.realpath(path)
  if real in _held:
    return path
  lock_path = os.path.join(path, LOCK)
  try:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise UserError(f"{lock_path}: cannot create the run lock ({e.strerror or e})") from None
  me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
  previous = _holder(fd)
  try:
    import fcntl
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except (BlockingIOError, PermissionError):
    os.close(fd)
    raise UserError(f"{path}: held by a live run ({_describe(previous)}); stop it or use another "
                    "--workdir") from None
  except OSError as e:  # no flock on this file system: trust the recorded pid on this host
    if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
      raise
    if previous.get("host") == me["host"] and previous.get("pid") not in (None, me["pid"]) \
        and _alive(int(previous["pid"])):
      os.close(fd)
      raise UserError(f"{path}: held by a live run ({_describe(previous)}); stop it or use another "
                      "--workdir") from None
  if previous.get("pid") and previous.get("pid") != me["pid"]:
    print(f"note: {path}: taking over the lock of a run that stopped ({_describe(previous)})", file=sys.stderr)
  try:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(me).encode())
    os.fsync(fd)
  except OSError as e:
    os.close(fd)
    raise UserError(f"{lock_path}: cannot write the run lock ({e.strerror or e})") from None
  _held[real] = fd
  return path


def release(workdir: str) -> None:
  """Empties and unlocks `workdir`'s lock (the file stays: removing it would race a waiting process)."""
  fd = _held.pop(os.path.realpath(os.path.abspath(workdir)), None)
  if fd is None:
    return
  try:
    os.ftruncate(fd, 0)
  except OSError:
    pass
  os.close(fd)  # closing the descriptor drops the flock
