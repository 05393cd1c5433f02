"""User-facing errors: one line that says what is wrong and where.

`jaxalign.main` catches `UserError` and prints `error: <message>` on stderr with
no traceback. Raise it at the edges (config, data files, CLI); never inside jit.
"""


class UserError(Exception):
  """A problem with the user's input (config value, data file, path)."""


def at(path, line: int | None, message: str) -> UserError:
  """Builds `UserError('path:line: message')` (line omitted when None)."""
  where = f"{path}:{line}" if line is not None else f"{path}"
  return UserError(f"{where}: {message}")


def run_cli(body, argv=None, *, what_path=lambda: "?") -> None:
  """The command-line tools' shell: parse absl flags from `argv`, run `body()`; a flag error, a `UserError`
  or an `OSError` (named by its file, else `what_path()`) becomes one `error:` line on stderr, exit status 2."""
  import sys

  from absl import flags

  def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
  try:
    flags.FLAGS(list(sys.argv if argv is None else argv))
  except flags.Error as e:
    fail(str(e))
  try:
    body()
  except UserError as e:
    fail(str(e))
  except OSError as e:
    fail(f"{e.filename or what_path()}: {e.strerror or e}")
