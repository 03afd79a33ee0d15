"""Files on local disk: atomic writes (of files and of folders), a folder held by one command at a time, the folder
walk that skips hidden names, sha256 digests, the detector cache location, and verification before loading.

Nothing here downloads. A detector file is looked up at an explicit path, else `$<ENV_VAR>`, else
`$FLEXGEN_CACHE/detectors/<file>` (cache default ~/.cache/flexgen), and its sha256 is checked before anything
executes it (TorchScript files are code).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

LOCK = ".flexgen-lock"


@contextlib.contextmanager
def folder_lock(folder: str | Path, command: str, clean: bool = True) -> Iterator[None]:
    """Hold `folder` (created if missing) for one command: a second flexgen process writing into it (two trainings of
    one run directory, two samplings of one folder) gets one clear error instead of mixing its files with the
    first's. An exclusive flock on its hidden `.flexgen-lock`, which is removed when the command ends (and released
    by the system if it dies), with the folder itself when the lock created it and nothing was written."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another flexgen command"
            os.close(fd)
            raise ValueError(f"{folder} is in use by {holder}: wait for it to end, or write elsewhere") from None
        try:                                    # the file a releasing holder removed meanwhile: take the new one
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{command} (pid {os.getpid()})".encode(), 0)
        if clean:                               # held: no live writer of ours owns them (`clean` False: other
            remove_stale_temporaries(folder)    # ranks may already be writing, unsynchronised)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()                       # (removed while still held: no one can take the old file)
        os.close(fd)
        if created and not any(folder.iterdir()):
            folder.rmdir()                      # a command refused before writing leaves no folder behind


STALE = re.compile(r"\..+\.[A-Za-z0-9_]+\.tmp")        # what atomic_write / atomic_directory name their temporaries


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the hidden `.NAME.*.tmp` files and folders that killed atomic writes left in `folder` and its direct
    subfolders, except those another command holds (call it only while holding the folder: `folder_lock`);
    `.NAME.*.old` folders, which a kill between atomic_directory's renames leaves as the only copy, are kept.
    Returns what it removed."""
    removed = []
    subfolders = (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and not (p / LOCK).exists())
    for parent in (folder, *subfolders):               # (a folder with its own lock is another command's)
        for entry in parent.iterdir():
            if STALE.fullmatch(entry.name):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed.append(entry)
    return removed


FULL = 1 << 20                  # bytes free below which a failed write is taken for a full disk


def _free(folder: Path) -> int:
    """Bytes free to this user on the device of `folder` (unknown: taken as plenty)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return FULL


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a hidden temporary path beside `path`; when the block succeeds it is renamed to `path` (atomic on one
    file system), when it fails it is removed. A reader never sees a half-written file under the final name, and
    a killed write leaves only a hidden `.NAME.*.tmp` that folder walks skip."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())          # mkstemp makes 0600; the file gets what open() would give it
        os.replace(tmp, path)
    except BaseException as e:
        from safetensors import SafetensorError

        # torch.save and safetensors report a full disk as RuntimeError / SafetensorError: named as what it is
        full = isinstance(e, (RuntimeError, SafetensorError)) and _free(path.parent) < FULL
        tmp.unlink(missing_ok=True)
        if full:
            raise OSError(errno.ENOSPC, f"no space left on the device of {path.parent} while writing {path.name} "
                          f"({type(e).__name__}: {' '.join(str(e).split())}); nothing was written under that "
                          "name") from e
        raise


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a new hidden temporary folder beside `path` to fill; when the block succeeds it takes the place of
    `path`, when it fails it is removed. A folder already at `path` is renamed aside to a hidden `.NAME.*.old`,
    the new one renamed into place, then the old one removed (restored if the second rename fails). A reader never
    sees a half-written folder under the final name: a killed write leaves only hidden `.NAME.*.tmp` (or, killed
    between the two renames, `.NAME.*.old` and no `path`), which folder walks skip."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())          # mkdtemp makes 0700; the folder gets what mkdir would give it
        if path.is_symlink() or path.exists():
            if not path.is_dir() or path.is_symlink():
                raise FileExistsError(f"{path} exists and is not a folder; not replacing it")
            old = tmp.with_name(tmp.name[:-len(".tmp")] + ".old")    # unique: tmp's random part is
            os.rename(path, old)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """`text` written to `path` through `atomic_write` (UTF-8)."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def visible(name: str) -> bool:
    """Hidden names (a leading dot: .DS_Store, .ipynb_checkpoints, temporary files of atomic writes) are skipped."""
    return not name.startswith(".")


def walk_visible(root: str | Path, onerror: Callable[[OSError], None] | None = None,
                 followlinks: bool = True) -> Iterator[tuple[Path, list[str], list[str]]]:
    """os.walk over `root` in sorted order, without hidden folders or files: (folder, subfolders, files). The
    subfolder list may be pruned in place by the caller, as with os.walk."""
    for folder, dirs, files in os.walk(root, onerror=onerror, followlinks=followlinks):
        dirs[:] = sorted(d for d in dirs if visible(d))
        yield Path(folder), dirs, sorted(f for f in files if visible(f))


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def detector_path(filename: str, env_var: str) -> Path:
    """`$env_var` if set, else `$FLEXGEN_CACHE/detectors/<filename>` (cache default ~/.cache/flexgen)."""
    if os.environ.get(env_var):
        return Path(os.environ[env_var]).expanduser()
    return Path(os.environ.get("FLEXGEN_CACHE", "~/.cache/flexgen")).expanduser() / "detectors" / filename


def verified_detector_file(path: str | Path | None, *, label: str, filename: str, env_var: str, sha256: str,
                           source: str) -> Path:
    """The detector file at `path` (default: `detector_path`) after its sha256 matched; a missing file is a
    FileNotFoundError and a wrong one a ValueError, both naming the file, the sha256 and where to put it."""
    path = Path(path).expanduser() if path is not None else detector_path(filename, env_var)
    where = (f"put {filename} at {detector_path(filename, env_var)} ($FLEXGEN_CACHE/detectors/, cache default "
             f"~/.cache/flexgen), set ${env_var}, or pass an explicit path; it comes from {source}")
    if not path.is_file():
        raise FileNotFoundError(f"{label} detector weights not found: {path} (expected sha256 {sha256}); {where}")
    actual = file_sha256(path)
    if actual != sha256:
        raise ValueError(f"{label} detector weights {path} have sha256 {actual}, expected {sha256}; refusing to load "
                         f"(TorchScript is executable code). Replace the file: {where}")
    return path
