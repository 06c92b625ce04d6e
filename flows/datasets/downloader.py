"""A careful downloader: mirrors first, resume with HTTP Range, retries with back-off, checksum, atomic rename.

A file is fetched into ``<dest>.part`` and renamed to ``<dest>`` only once its size and checksum match, so a
complete-looking file is always complete. An interrupted transfer resumes from the ``.part`` file with an
HTTP ``Range`` request. An HTML page where a binary file was expected (a login wall, a Google Drive
confirmation page, an error page) is refused, except that a Drive confirmation page is followed once.
Mirrors (``mirror=`` or env ``FLOWS_DATA_MIRROR``; a local directory or a base URL; several separated by
commas) are tried before the official URLs. Archives are extracted refusing any entry that would land
outside the target directory.
"""

from __future__ import annotations

from ..errors import FlowsError

import hashlib
import os
import re
import shutil
import socket
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

__all__ = ["DownloadError", "fetch", "candidate_urls", "extract", "file_digest", "MIRROR_ENV"]

MIRROR_ENV = "FLOWS_DATA_MIRROR"
_CHUNK = 1 << 16


class DownloadError(FlowsError, RuntimeError):
    """A file could not be fetched or verified; the message is one line naming the file and what to do."""


def file_digest(path, algo: str = "sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _mirrors(mirror):
    value = mirror if mirror else os.environ.get(MIRROR_ENV, "")
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v]
    return [v.strip() for v in str(value).split(",") if v.strip()]


def candidate_urls(filename: str, urls, mirror=None) -> list[str]:
    """Mirror locations of ``filename`` (tried first), then the official ``urls``."""
    out = []
    for m in _mirrors(mirror):
        if re.match(r"^[a-z][a-z0-9+.-]*://", m, re.I):
            out.append(m.rstrip("/") + "/" + urllib.parse.quote(filename))
        else:
            out.append(str(Path(m).expanduser() / filename))
    return out + list(urls)


def _verify(path: Path, size=None, md5=None, sha256=None) -> str | None:
    """None if ``path`` matches the expected size/checksums, else why not."""
    got = path.stat().st_size
    if size is not None and got != int(size):
        return f"size {got} bytes, expected {size}"
    if md5 and file_digest(path, "md5") != md5.lower():
        return f"MD5 {file_digest(path, 'md5')}, expected {md5}"
    if sha256 and file_digest(path, "sha256") != sha256.lower():
        return f"SHA-256 {file_digest(path, 'sha256')}, expected {sha256}"
    return None


def _looks_html(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(512).lstrip().lower()
    return head.startswith(b"<!doctype html") or head.startswith(b"<html") or b"<html" in head[:200]


class _Progress:
    """A progress line: carriage-return updates on a terminal, a plain line per 10 % (no control chars) otherwise."""

    def __init__(self, name, total, stream=None):
        self.name, self.total, self.stream = name, total, stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last_decile = -1
        self.t0 = time.time()

    def update(self, done):
        if self.total:
            decile = int(10 * done / self.total)
            if self.tty:
                self.stream.write(f"\r{self.name}: {done / 1e6:.1f}/{self.total / 1e6:.1f} MB ({100 * done / self.total:.0f}%)")
            elif decile > self.last_decile:
                self.stream.write(f"{self.name}: {done / 1e6:.1f}/{self.total / 1e6:.1f} MB ({10 * decile}%)\n")
            self.last_decile = decile
        self.stream.flush()

    def close(self, done):
        rate = done / max(time.time() - self.t0, 1e-6) / 1e6
        self.stream.write(("\n" if self.tty else "") + f"{self.name}: done, {done / 1e6:.1f} MB at {rate:.1f} MB/s\n")
        self.stream.flush()


_DRIVE_CONFIRM = re.compile(rb'confirm=([0-9A-Za-z_-]+)|name="confirm" value="([0-9A-Za-z_-]+)"')
_DRIVE_UUID = re.compile(rb'name="uuid" value="([0-9A-Za-z_-]+)"')


def _drive_confirm_url(url: str, page: bytes) -> str | None:
    """The URL a Google Drive "can't scan for viruses" page asks to follow, or None."""
    m = _DRIVE_CONFIRM.search(page)
    if not m:
        return None
    token = (m.group(1) or m.group(2)).decode()
    parsed = urllib.parse.urlparse(url)
    query = dict(urllib.parse.parse_qsl(parsed.query))
    query["confirm"] = token
    u = _DRIVE_UUID.search(page)
    if u:
        query["uuid"] = u.group(1).decode()
    return urllib.parse.urlunparse(parsed._replace(query=urllib.parse.urlencode(query)))


def _http_get(url: str, part: Path, progress_name: str, timeout: float, quiet: bool) -> None:
    """Append ``url`` to ``part`` from its current size (HTTP Range); raise on a short or failed transfer."""
    start = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "flows-datasets/1"})
    if start:
        req.add_header("Range", f"bytes={start}-")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        status = getattr(resp, "status", 200)
        if start and status != 206:  # the server ignored Range: start again
            start = 0
        length = resp.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        progress = None if quiet else _Progress(progress_name, total)
        done = start
        with open(part, "ab" if start else "wb") as f:
            while True:
                block = resp.read(_CHUNK)
                if not block:
                    break
                f.write(block)
                done += len(block)
                if progress:
                    progress.update(done)
        if total is not None and done < total:
            raise urllib.error.ContentTooShortError(f"got {done} of {total} bytes", None)
        if progress:
            progress.close(done)


def fetch(filename: str, dest_dir, urls=(), mirror=None, size=None, md5=None, sha256=None, retries: int = 3,
          backoff: float = 1.0, timeout: float = 60.0, quiet: bool = False, allow_html: bool = False,
          how_to: str = "") -> Path:
    """Fetch ``filename`` into ``dest_dir``: try each mirror then each URL, resume, retry, verify, rename.

    Returns the path of the verified file. Raises :class:`DownloadError` (one line: the file, the URLs
    tried with their errors, and how to provide it) when every source failed.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / filename
    if dest.exists() and _verify(dest, size, md5, sha256) is None:
        return dest
    part = dest.with_name(dest.name + ".part")
    errors = []
    for url in candidate_urls(filename, urls, mirror):
        is_url = re.match(r"^[a-z][a-z0-9+.-]*://", url, re.I) is not None
        if not is_url:
            if not Path(url).is_file():
                errors.append(f"{url} (no such file)")
                continue
            shutil.copyfile(url, part)
        else:
            ok, current, followed = False, url, False
            for attempt in range(int(retries) + 1):
                try:
                    _http_get(current, part, filename, timeout, quiet)
                    if not allow_html and _looks_html(part):
                        page = part.read_bytes()
                        confirm = None if followed else _drive_confirm_url(current, page)
                        part.unlink()
                        if confirm:
                            current, followed = confirm, True
                            continue
                        raise DownloadError(f"{current} answered an HTML page, not the file")
                    ok = True
                    break
                except DownloadError as exc:
                    errors.append(str(exc))
                    break
                except urllib.error.HTTPError as exc:
                    if exc.code == 416 and part.exists():  # range past the end: the part is whole or wrong
                        ok = True
                        break
                    errors.append(f"{current} (HTTP {exc.code})")
                    if exc.code in (403, 404, 410):
                        break
                except (urllib.error.URLError, OSError, ValueError) as exc:
                    reason = getattr(exc, "reason", exc)
                    errors.append(f"{current} ({type(exc).__name__}: {reason})")
                    if isinstance(reason, socket.gaierror):  # no such host (or no network): retrying won't help
                        break
                if attempt < retries:
                    time.sleep(backoff * 2**attempt)
            if not ok:
                continue
        why = _verify(part, size, md5, sha256)
        if why is None:
            os.replace(part, dest)
            return dest
        errors.append(f"{url} ({why})")
        part.unlink(missing_ok=True)
    part.unlink(missing_ok=True)
    tried = "; ".join(errors) if errors else "no URL known"
    hint = how_to or (f"put {filename} in a directory and pass it as mirror= (or set {MIRROR_ENV}=DIR_OR_URL), "
                      f"or copy it to {dest}")
    raise DownloadError(f"could not fetch {filename}: tried {tried}. To provide it: {hint}")


def _safe_target(root: Path, name: str) -> Path:
    target = (root / name).resolve()
    if os.path.isabs(name) or (target != root and root not in target.parents):
        raise DownloadError(f"archive entry {name!r} would be written outside {root}; refusing to extract")
    return target


def _extract_entries(entries, root: Path, members) -> list[Path]:
    """Write archive ``entries`` [(name, is_dir, is_link_or_device, open_fn)] under ``root``: every entry is checked
    first (an archive with one escaping entry or link is refused whole), then those in ``members`` (all when None)
    are written, each through a ``.part`` file renamed into place."""
    for name, _, special, _ in entries:
        _safe_target(root, name)
        if special:
            raise DownloadError(f"archive entry {name!r} is a link or device; refusing to extract")
    written = []
    for name, is_dir, _, open_fn in entries:
        if members is not None and name not in members:
            continue
        target = _safe_target(root, name)
        if is_dir:
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        with open_fn() as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
        os.replace(tmp, target)
        written.append(target)
    return written


def extract(archive, dest_dir, members=None) -> list[Path]:
    """Extract a zip or tar(.gz) into ``dest_dir``, refusing entries (or links) that escape it.

    Every entry is checked before anything is written. Returns the paths written.
    """
    archive, root = Path(archive), Path(dest_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            entries = [(i.filename, i.is_dir(), False, lambda i=i: zf.open(i)) for i in zf.infolist()]
            return _extract_entries(entries, root, members)
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            entries = [(i.name, i.isdir(), i.issym() or i.islnk() or i.isdev(), lambda i=i: tf.extractfile(i))
                       for i in tf.getmembers()]
            return _extract_entries(entries, root, members)
    raise DownloadError(f"{archive} is neither a zip nor a tar archive (is it an HTML page?)")
