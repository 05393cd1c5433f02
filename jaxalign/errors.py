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
