"""Atomic writes and shared metadata, so every artifact is a complete plain file or absent, never half-written."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

SCHEMA_VERSION = 1


def umask_mode(directory: bool = False) -> int:
    """The mode a plain open()/mkdir() would give (0644/0755 under the usual umask): mkstemp/mkdtemp create
    0600/0700, which another user (a serving container) could not read after the rename."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def write_json_atomic(path: str | os.PathLike, payload: Any, indent: int | None = 2) -> Path:
    """Write JSON next to its destination, then rename, so a crash never leaves a truncated file; indent=None
    writes it compactly (for files that are mostly long number lists)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=indent, sort_keys=False,
                      separators=None if indent is not None else (",", ":"))
            handle.write("\n")
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_csv_atomic(path: str | os.PathLike, frame) -> Path:
    """A pandas DataFrame as CSV (6 significant digits), temp file + rename like write_json_atomic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_csv(tmp, index=False, float_format="%.6g")
    os.replace(tmp, path)
    return path


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp directory beside `path` and move it into place only if the block finishes."""
    final = Path(path)
    if final.exists() and not overwrite:
        from .errors import UserError

        raise UserError(f"output directory {final} already exists: choose another --out or pass --overwrite")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".partial"))
    try:
        yield tmp
        # Everything inside gets the modes a plain write would have: some writers (safetensors through
        # save_pretrained, mkdtemp itself) create 0600/0700 files that another user could not read. A script made
        # executable inside (a kit's run.sh) stays executable.
        file_mode, dir_mode = umask_mode(), umask_mode(directory=True)
        for item in [tmp, *tmp.rglob("*")]:
            if not item.is_symlink():
                executable = not item.is_dir() and item.stat().st_mode & stat.S_IXUSR
                os.chmod(item, dir_mode if item.is_dir() or executable else file_mode)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def environment() -> dict[str, Any]:
    """Versions and machine facts recorded with every result, so numbers can be compared and reproduced."""
    import torch
    import transformers

    from . import __version__

    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "amoeba_search": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "machine": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def _cpuinfo(field: str) -> str | None:
    """The first value of a /proc/cpuinfo field; None where it cannot be read (not Linux)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    return None


def cpu_flags() -> set[str]:
    """The CPU's instruction-set flags (empty where /proc/cpuinfo cannot be read)."""
    return set((_cpuinfo("flags") or "").split())


def cpu_name() -> str:
    """CPU model string from /proc/cpuinfo (falls back to the platform's processor field)."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def read_json(path: str | os.PathLike, what: str, how_to_make: str) -> Any:
    """Parse a JSON artifact, turning a missing or malformed file into a one-line UserError with the fix."""
    from .errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} file {path} not found: {how_to_make}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{what} file {path} is not valid JSON (line {exc.lineno}: {exc.msg})") from exc
    except UnicodeDecodeError:
        raise UserError(f"{what} file {path} is not JSON text (not UTF-8): {how_to_make}") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} file {path}: {exc.strerror}") from None


def dir_mib(path: str | os.PathLike) -> float:
    """Size on disk of everything under a directory (a checkpoint), in MiB."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20


class ResultLog:
    """A resumable JSONL log: a header line with the settings the results depend on, then one JSON object per
    result, flushed as written. Reopening with other settings is refused (the results would mean something
    else); a line cut off by an interruption is skipped, so that result is simply computed again."""

    def __init__(self, path: str | os.PathLike, header: dict, what: str, fix: str) -> None:
        from .errors import UserError

        self.path = Path(path)
        self.rows: list[dict] = []
        if not self.path.exists() or self.path.stat().st_size == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"header": header}) + "\n", encoding="utf-8")
            return
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
            first = json.loads(lines[0])
        except (UnicodeDecodeError, json.JSONDecodeError, IndexError):
            raise UserError(f"{what} {self.path} is not a result log (its first line is not a JSON header): "
                            f"{fix}") from None
        if not isinstance(first, dict) or first.get("header") != header:
            raise UserError(f"{what} {self.path} was written for other settings (model, calibration or "
                            f"variants): {fix}")
        for line in lines[1:]:
            with contextlib.suppress(json.JSONDecodeError):
                row = json.loads(line)
                if isinstance(row, dict):
                    self.rows.append(row)
        if not lines[-1].strip() or not self.path.read_bytes().endswith(b"\n"):
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write("\n")             # the next row starts on its own line after a torn one

    def append(self, row: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.rows.append(row)
