"""Writing files so that a reader never sees half of one: the project's one atomic-write helper.

Every file the workbench writes for later reading (activation shards and manifests, intervention specs
and their sidecars, checkpoints, run summaries) goes through `atomic_write`: the content is written to a
temporary file in the destination folder, flushed to disk, and renamed over the final name. A crash or a
full disk leaves either the old file or the new one, never a truncated one.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, Union

__all__ = ["atomic_write", "write_text_atomic", "write_json_atomic", "check_writable_dir", "write_state",
           "read_state", "check_same_run", "CheckpointMismatch", "TMP_SUFFIX"]

PathLike = Union[str, os.PathLike]
TMP_SUFFIX = ".tmp"  # temporary files are `.<name>.<random>.tmp` in the destination folder


def _fsync_dir(folder: Path) -> None:
    try:  # a directory fsync makes the rename itself durable; not available on every OS (Windows)
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write: Callable[[str], Any], mode: Optional[int] = None) -> Path:
    """Call `write(tmp_path)` to fill a temporary file, then rename it to `path` (same folder).

    mode: file permissions; default: what a plain `open(path, "w")` would give under the current umask
    (temporary files are created 0600, which must not leak into the final file).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_text_atomic(path: PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json_atomic(path: PathLike, obj: Any, indent: Optional[int] = 2) -> Path:
    """JSON with NaN/inf refused (they are not JSON), written atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


def check_writable_dir(folder: PathLike, what: str = "output folder") -> Path:
    """Create `folder` if needed and check a file can be written there — before hours of work, not after.

    Raises a ValueError naming the folder and the reason (exists as a file, permission denied, ...)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"the {what} {str(folder)!r} exists and is not a folder; pass another path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"cannot write to the {what} {str(folder)!r}: {err.strerror or err}; "
                         "pass a folder you can write to") from None
    return folder


def write_state(path: PathLike, tensors: dict, schema: str, run: dict, state: dict) -> Path:
    """A training checkpoint as one safetensors file, written atomically: `tensors` as tensors; `schema`, the run's
    settings (`run`, compared on resume) and the JSON state (`state`: epoch, optimizer scalars, history ...) in its
    metadata. No pickle."""
    from safetensors.torch import save_file

    metadata = {"schema": schema, "run": json.dumps(run, sort_keys=True), "state": json.dumps(state)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_state(path: PathLike, schema: str, *, kind: str, what: str, remedy: str,
               elsewhere: str = "output folder") -> tuple[dict, dict, dict]:
    """(run, state, tensors) of a `write_state` file. Another schema raises "{path} is not {kind} ...; delete it or
    use another {elsewhere}"; a file that cannot be read "{what} {path} cannot be read (...); {remedy}" (ValueError)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("schema") != schema:
                raise ValueError(f"{path} is not {kind} (schema {meta.get('schema')!r}, expected {schema!r}); "
                                 f"delete it or use another {elsewhere}")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return json.loads(meta["run"]), json.loads(meta["state"]), tensors
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{what} {path} cannot be read ({e}); {remedy}") from None


class CheckpointMismatch(ValueError):
    """A checkpoint belongs to a run with other settings than the one resuming from it."""


def check_same_run(stored: dict, run: dict, source: str, remedy: str) -> None:
    """Raise CheckpointMismatch naming the first setting (sorted by name) that differs between the `run` a checkpoint
    was written by (`stored`, from `read_state`) and the `run` asking to resume; `run` is compared as its JSON form.
    The message: "{source} was written by a run with a different {key}: stored ... requested ... {remedy}"."""
    run = json.loads(json.dumps(run, sort_keys=True))
    for key in sorted(set(stored) | set(run)):
        if stored.get(key) != run.get(key):
            raise CheckpointMismatch(f"{source} was written by a run with a different {key}:\n"
                                     f"  stored:    {stored.get(key)!r}\n  requested: {run.get(key)!r}\n{remedy}")
