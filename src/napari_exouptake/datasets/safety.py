"""Trust: SHA-256 checksums and safe zip extraction / deterministic zip writing.

Zip members with absolute paths, ``..``, backslashes, links or special files, encrypted
members, too many or too large members (limits below) are refused before anything is
extracted.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path

from .schema import CHECKSUM_FILE, MAX_TEXT_BYTES, DatasetError, _check_relpath

#: Largest single member of a zip bundle, bytes (uncompressed).
MAX_MEMBER_BYTES = 4 * 1024**3
#: Largest total uncompressed size of a zip bundle, bytes.
MAX_TOTAL_BYTES = 64 * 1024**3
#: Most members in a zip bundle.
MAX_MEMBERS = 100_000
#: Largest compression ratio (uncompressed / compressed) of a zip member of at least
#: ``RATIO_MIN_BYTES``, and of the whole archive when it unpacks to that much. Our own TIFFs are
#: compressed inside (ratio about 1); deflate's own maximum is about 1,030.
MAX_RATIO = 100.0
RATIO_MIN_BYTES = 16 * 1024**2


def _sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _walk(root: Path) -> tuple[list[str], list[str]]:
    """(regular files, links or special files) under ``root`` as sorted relative POSIX paths."""
    files, bad = [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        d = Path(dirpath)
        for name in list(dirnames):
            if (d / name).is_symlink():
                bad.append((d / name).relative_to(root).as_posix())
                dirnames.remove(name)
        for name in filenames:
            p = d / name
            rel = p.relative_to(root).as_posix()
            mode = p.lstat().st_mode
            if stat.S_ISREG(mode):
                files.append(rel)
            else:
                bad.append(rel)
    return sorted(files), sorted(bad)


def compute_checksums(root: str | Path) -> dict[str, str]:
    """SHA-256 (hex) of every regular file under ``root`` except ``checksums.sha256``.

    Returns
    -------
    dict
        Relative POSIX path -> hex digest, sorted by path.

    Raises
    ------
    DatasetError
        When the folder holds a symbolic link or special file.
    """
    root = Path(root)
    files, bad = _walk(root)
    if bad:
        raise DatasetError(
            f"{root}: links and special files are not allowed in a bundle: {', '.join(bad)}"
        )
    return {rel: _sha256(root / rel) for rel in files if rel != CHECKSUM_FILE}


def write_checksums(root: str | Path) -> Path:
    """Write ``checksums.sha256`` (``sha256sum -c`` format) for every file under ``root``."""
    root = Path(root)
    sums = compute_checksums(root)
    text = "".join(f"{digest}  {rel}\n" for rel, digest in sums.items())
    path = root / CHECKSUM_FILE
    path.write_text(text, encoding="utf-8")
    return path


def _read_checksums(root: Path, problems: list[str]) -> dict[str, str]:
    path = root / CHECKSUM_FILE
    if not path.is_file() or path.is_symlink():
        problems.append(f"{CHECKSUM_FILE}: missing")
        return {}
    if path.stat().st_size > MAX_TEXT_BYTES:
        problems.append(f"{CHECKSUM_FILE}: larger than {MAX_TEXT_BYTES} bytes")
        return {}
    sums: dict[str, str] = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        m = re.match(r"^([0-9a-fA-F]{64}) [ *](.+)$", line)
        if not m:
            problems.append(f"{CHECKSUM_FILE}: line {i} is not '<sha256>  <path>'")
            continue
        digest, rel = m.group(1).lower(), m.group(2)
        try:
            _check_relpath(rel, f"{CHECKSUM_FILE} line {i}")
        except DatasetError as exc:
            problems.append(str(exc))
            continue
        if rel in sums:
            problems.append(f"{CHECKSUM_FILE}: {rel} is listed twice")
        sums[rel] = digest
    return sums


def _check_members(
    zf: zipfile.ZipFile,
    max_member_bytes: int,
    max_total_bytes: int,
    max_members: int,
    max_ratio: float = MAX_RATIO,
) -> list[tuple[zipfile.ZipInfo, str]]:
    infos = zf.infolist()
    if len(infos) > max_members:
        raise DatasetError(f"zip has {len(infos)} members, more than the limit {max_members}")
    out, seen, total = [], set(), 0
    for info in infos:
        name = info.filename
        is_dir = name.endswith("/")
        rel = name[:-1] if is_dir else name
        _check_relpath(rel, f"zip member {name!r}")
        mode = info.external_attr >> 16
        ftype = stat.S_IFMT(mode)
        if ftype == stat.S_IFLNK:
            raise DatasetError(f"zip member {name!r} is a symbolic link; links are not allowed")
        if ftype not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise DatasetError(f"zip member {name!r} is a special file (mode {oct(mode)})")
        if info.flag_bits & 0x1:
            raise DatasetError(f"zip member {name!r} is encrypted")
        if info.file_size > max_member_bytes:
            raise DatasetError(
                f"zip member {name!r} is {info.file_size} bytes, more than the "
                f"per-file limit {max_member_bytes}"
            )
        if info.file_size >= RATIO_MIN_BYTES and info.file_size > max_ratio * max(
            info.compress_size, 1
        ):
            raise DatasetError(
                f"zip member {name!r} would unpack {info.file_size} bytes from "
                f"{info.compress_size} (ratio {info.file_size / max(info.compress_size, 1):.0f}, "
                f"limit {max_ratio:.0f}); refusing a possible zip bomb"
            )
        total += info.file_size
        if total > max_total_bytes:
            raise DatasetError(f"zip holds more than the total limit of {max_total_bytes} bytes")
        key = rel.casefold()
        if key in seen:
            raise DatasetError(f"zip member {name!r} appears twice (names compared ignoring case)")
        seen.add(key)
        out.append((info, rel))
    files = {rel for info, rel in out if not info.filename.endswith("/")}
    for rel in files:  # a file may not also be a folder of another member
        parts = rel.split("/")
        for k in range(1, len(parts)):
            if "/".join(parts[:k]) in files:
                raise DatasetError(f"zip member {rel!r} lies under a file of the same name")
    return out


def safe_extract(
    zip_path: str | Path,
    dest: str | Path,
    *,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_members: int = MAX_MEMBERS,
    max_ratio: float = MAX_RATIO,
    listed_only: bool = False,
) -> Path:
    """Extract a zip into ``dest`` after checking every member; nothing is written elsewhere.

    Every ``ZipInfo`` is checked before anything is written: absolute paths, drive letters,
    ``..``/``.``/empty parts, backslashes, symbolic links and other special files, encrypted
    members, duplicate names, and sizes (per member, total, member count). Members are streamed
    into a fresh staging folder beside ``dest`` (created with ``O_EXCL``, mode 0644, no execute
    bits), byte counts are enforced while streaming, and the staging folder is renamed onto
    ``dest`` only when everything succeeded.

    Parameters
    ----------
    zip_path : str or Path
    dest : str or Path
        Target folder; must not exist or be empty.
    max_member_bytes, max_total_bytes, max_members : int
        Limits (uncompressed bytes, member count). The total must also fit the free space
        of the target's disk.
    max_ratio : float
        Largest compression ratio of a member (and of the archive) unpacking to at least
        ``RATIO_MIN_BYTES`` (16 MiB).
    listed_only : bool
        A bundle: the zip must hold ``checksums.sha256`` (at its top or in its one top
        folder), and every other file member must be listed in it; checked before anything
        is extracted.

    Returns
    -------
    Path
        ``dest``.

    Raises
    ------
    DatasetError
        When the archive is not a zip, breaks a rule (the message names the member), or
        ``dest`` is not empty.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    if dest.exists() and (not dest.is_dir() or dest.is_symlink() or any(dest.iterdir())):
        raise DatasetError(f"{dest}: extraction target must not exist or be an empty folder")
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"{zip_path}: not a readable zip file ({exc})") from None
    try:
        members = _check_members(zf, max_member_bytes, max_total_bytes, max_members, max_ratio)
        total = sum(info.file_size for info, _ in members)
        archive = max(Path(zip_path).stat().st_size, 1)
        if total >= RATIO_MIN_BYTES and total > max_ratio * archive:
            raise DatasetError(
                f"{zip_path}: would unpack {total} bytes from {archive} (ratio "
                f"{total / archive:.0f}, limit {max_ratio:.0f}); refusing a possible zip bomb"
            )
        if listed_only:
            _check_listed(zf, members)
        dest.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(dest.parent).free
        if total > free:
            raise DatasetError(
                f"{zip_path}: unpacks to {total} bytes but {dest.parent} has {free} bytes free"
            )
    except zipfile.BadZipFile as exc:
        zf.close()
        raise DatasetError(f"{zip_path}: corrupt zip ({exc})") from None
    except BaseException:
        zf.close()
        raise
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    base = staging.resolve()
    try:
        with zf:
            for info, rel in members:
                target = staging / rel
                if base not in target.resolve().parents:  # defence in depth
                    raise DatasetError(f"zip member {info.filename!r} escapes the target folder")
                if info.filename.endswith("/"):
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                written = 0
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                with zf.open(info) as src, os.fdopen(fd, "wb") as out:
                    while block := src.read(1 << 20):
                        written += len(block)
                        if written > info.file_size or written > max_member_bytes:
                            raise DatasetError(
                                f"zip member {info.filename!r} is larger than it "
                                "declares; refusing it"
                            )
                        out.write(block)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes 0700; a bundle is for sharing
        if dest.exists():
            dest.rmdir()
        os.replace(staging, dest)
    except zipfile.BadZipFile as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise DatasetError(f"{zip_path}: corrupt zip ({exc})") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


def _check_listed(zf: zipfile.ZipFile, members: list[tuple[zipfile.ZipInfo, str]]) -> None:
    """Every file member of a bundle zip is listed in its checksums.sha256 (before extracting)."""
    files = [(info, rel) for info, rel in members if not info.filename.endswith("/")]
    roots = [rel[: -len(CHECKSUM_FILE)] for _, rel in files if rel.split("/")[-1] == CHECKSUM_FILE]
    roots = [r for r in roots if r.count("/") <= 1]
    if len(roots) != 1:
        raise DatasetError(
            f"zip holds {'no' if not roots else 'more than one'} {CHECKSUM_FILE} at its top; "
            "not a dataset bundle"
        )
    prefix = roots[0]
    info = zf.getinfo(prefix + CHECKSUM_FILE)
    if info.file_size > MAX_TEXT_BYTES:
        raise DatasetError(f"{CHECKSUM_FILE}: larger than {MAX_TEXT_BYTES} bytes")
    with zf.open(info) as fh:
        text = fh.read(MAX_TEXT_BYTES + 1).decode("utf-8", errors="replace")
    listed = set()
    for line in text.splitlines():
        m = re.match(r"^[0-9a-fA-F]{64} [ *](.+)$", line)
        if m:
            listed.add(prefix + m.group(1))
    for _, rel in files:
        if rel != prefix + CHECKSUM_FILE and rel not in listed:
            raise DatasetError(
                f"zip member {rel!r} is not listed in {CHECKSUM_FILE}; refusing the bundle "
                "before extracting anything"
            )


def _write_zip(root: Path, out: Path) -> Path:
    """Zip ``root``'s files (deterministic order and timestamps, no execute bits)."""
    files, bad = _walk(root)
    if bad:
        raise DatasetError(f"{root}: links are not allowed in a bundle: {', '.join(bad)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
            for rel in files:
                info = zipfile.ZipInfo(rel, date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                with open(root / rel, "rb") as src, zf.open(info, "w") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
