"""Files the package writes: check that an output can be written before the work that produces it starts."""

from __future__ import annotations

import tempfile
from pathlib import Path


def check_writable(path: str | Path, *, folder: bool = False, what: str = "output") -> Path:
    """Raise `PermissionError` now, naming `path`, if it cannot be written (a file, or a `folder` to fill).

    Creates the missing parent folders and writes (then removes) a probe file where the output will go, so a long
    run cannot finish its work and then lose it at the last step.
    """
    path = Path(path)
    where = path if folder else path.parent
    try:
        where.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=where, prefix=".write-check-"):
            pass
        if not folder and path.is_dir():
            raise IsADirectoryError(f"{path} is a folder")
    except OSError as err:
        raise PermissionError(
            f"cannot write the {what} {path} ({err.strerror or err}): choose a writable location before the work starts"
        ) from None
    return path
