"""``fetch_bundle``: download a bundle by URL (pooch), check its SHA-256, verify, cache."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .bundle import _cache_dir, _find_root, _verify_root
from .safety import safe_extract
from .schema import _HEX64, DatasetError

#: Largest download of ``dataset fetch``, bytes.
MAX_DOWNLOAD_BYTES = 16 * 1024**3


def _file_downloader(url: str, output_file: Any, pooch: Any = None) -> None:
    """pooch downloader for ``file://`` URLs (shared drives, tests): a plain copy."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    parsed = urlparse(url)
    src = Path(url2pathname(parsed.path))
    if parsed.netloc not in ("", "localhost"):
        raise DatasetError(f"{url}: file:// URLs must name a local file (file:///path)")
    if not src.is_file():
        raise DatasetError(f"{url}: no such file {src}")
    limit = getattr(pooch, "max_bytes", MAX_DOWNLOAD_BYTES)
    if src.stat().st_size > limit:
        raise DatasetError(
            f"{url}: the file is {src.stat().st_size} bytes, more than the download limit of "
            f"{limit} bytes"
        )
    if hasattr(output_file, "write"):
        with open(src, "rb") as fh:
            shutil.copyfileobj(fh, output_file)
    else:
        shutil.copyfile(src, output_file)


class _Limits:
    """Passed as pooch's third downloader argument: carries the byte limit."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes


def _http_downloader(timeout_s: float, max_bytes: int) -> Callable[..., None]:
    """Stream an http(s) download, refusing more than ``max_bytes`` (header first, then count)."""

    def download(url: str, output_file: Any, pooch: Any = None) -> None:
        import requests

        with requests.get(url, stream=True, timeout=timeout_s) as r:
            r.raise_for_status()
            length = r.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > max_bytes:
                raise DatasetError(
                    f"{url}: the server announces {int(length)} bytes, more than the download "
                    f"limit of {max_bytes} bytes; nothing was downloaded"
                )
            with contextlib.ExitStack() as stack:
                fh = output_file
                if not hasattr(output_file, "write"):
                    fh = stack.enter_context(open(output_file, "wb"))
                n = 0
                for chunk in r.iter_content(1 << 20):
                    n += len(chunk)
                    if n > max_bytes:
                        raise DatasetError(
                            f"{url}: the download passed the limit of {max_bytes} bytes; "
                            "stopped and nothing was kept"
                        )
                    fh.write(chunk)

    return download


def _check_url_alive(url: str, timeout_s: float, cached: Path) -> None:
    """A cached download is used only while its URL still serves it (no false success)."""
    import requests

    hint = (
        f"; a copy with this SHA-256 is in the cache ({cached}) but is not used for a URL "
        "that does not answer: check the URL, or open the cached copy with "
        f"`exouptake dataset verify {cached}`"
    )
    if url.startswith("file:"):
        from urllib.parse import urlparse
        from urllib.request import url2pathname

        if not Path(url2pathname(urlparse(url).path)).is_file():
            raise DatasetError(f"{url}: no such file{hint}")
        return
    if not url.startswith(("http://", "https://")):
        return  # doi:, ftp://: pooch's own resolution; the hash still guards the content
    try:
        r = requests.head(url, allow_redirects=True, timeout=timeout_s)
        if r.status_code in (403, 405, 501):  # servers that refuse HEAD: ask for one byte
            r = requests.get(url, headers={"Range": "bytes=0-0"}, stream=True, timeout=timeout_s)
            r.close()
    except requests.exceptions.RequestException as exc:
        raise DatasetError(f"{url}: cannot reach the URL ({type(exc).__name__}){hint}") from None
    if r.status_code >= 400:
        raise DatasetError(f"{url}: the server answered HTTP {r.status_code}{hint}")


def fetch_bundle(
    url: str,
    sha256: str,
    out: str | Path | None = None,
    *,
    cache_dir: str | Path | None = None,
    timeout_s: float = 60.0,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
) -> Path:
    """Download a zip bundle through pooch (cached, hash-checked), extract and verify it.

    Parameters
    ----------
    url : str
        ``https://``, ``http://``, ``ftp://``, ``doi:`` (pooch) or ``file://`` URL of a bundle zip.
    sha256 : str
        Expected SHA-256 of the zip (64 hex digits, optionally ``sha256:``-prefixed).
    out : str or Path, optional
        Folder to extract into (must not exist or be empty). Default: the cache,
        ``<cache>/bundles/<sha256[:16]>``, reused when already there and intact.
    cache_dir : str or Path, optional
        Download cache (default ``$EXOUPTAKE_CACHE_DIR`` or pooch's OS cache folder).
    timeout_s : float
        Network timeout per request, seconds.
    max_bytes : int
        Largest download (default ``MAX_DOWNLOAD_BYTES``, 16 GiB); refused from the
        announced size, or stopped when passed.

    Returns
    -------
    Path
        The extracted, verified bundle folder.

    Notes
    -----
    A zip already in the cache is used only after the URL still answers (a dead URL is an
    error, not a success from the cache). A zip refused on extraction or verification is
    deleted from the cache, and a bundle that fails verification is removed from ``out``.

    Raises
    ------
    DatasetError
        Offline or unreachable host, HTTP error, hash mismatch, unsafe or invalid bundle.
    """
    import pooch

    digest = sha256.strip().lower().removeprefix("sha256:")
    if not _HEX64.match(digest):
        raise DatasetError(f"--sha256 must be 64 hexadecimal digits, got {sha256!r}")
    cache = Path(cache_dir) if cache_dir is not None else _cache_dir()
    downloads = cache / "downloads"
    fname = f"{digest[:16]}.zip"
    downloader: Any = None
    if url.startswith("file:"):
        limits = _Limits(max_bytes)

        def downloader(url: str, output_file: Any, pooch: Any = None) -> None:
            _file_downloader(url, output_file, limits)

    elif url.startswith(("http://", "https://")):
        downloader = _http_downloader(timeout_s, max_bytes)
    cached = downloads / fname
    if cached.is_file():
        _check_url_alive(url, timeout_s, cached)
    zpath = _retrieve(pooch, url, digest, downloads, fname, downloader)
    target = Path(out) if out is not None else cache / "bundles" / digest[:16]
    if out is None and target.is_dir() and any(target.iterdir()):
        with contextlib.suppress(DatasetError):
            if not _verify_root(_find_root(target)):
                return _find_root(target)
        shutil.rmtree(target)
    existed = target.is_dir()
    try:
        safe_extract(zpath, target, listed_only=True)
    except DatasetError:
        zpath.unlink(missing_ok=True)  # a refused zip does not stay in the cache
        raise
    try:
        root = _find_root(target)
        problems = _verify_root(root)
    except DatasetError as exc:
        problems = [str(exc)]
    if problems:
        zpath.unlink(missing_ok=True)
        shutil.rmtree(target, ignore_errors=True)  # nothing unverified is left in --out
        if existed:
            target.mkdir()
        raise DatasetError(
            f"{url}: the downloaded bundle failed verification (removed): " + "; ".join(problems)
        )
    return root


def _retrieve(pooch: Any, url: str, digest: str, folder: Path, fname: str, downloader) -> Path:
    import requests

    try:
        return Path(
            pooch.retrieve(
                url,
                known_hash=f"sha256:{digest}",
                fname=fname,
                path=folder,
                downloader=downloader,
                progressbar=False,
            )
        )
    except DatasetError:
        raise
    except requests.exceptions.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else "?"
        raise DatasetError(f"{url}: the server answered HTTP {code}; check the URL") from None
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise DatasetError(
            f"{url}: cannot download: no network connection, or the host is unreachable "
            f"({type(exc).__name__}). Download the file another way and run "
            "`exouptake dataset verify FILE.zip`, or retry when online"
        ) from None
    except requests.exceptions.RequestException as exc:
        raise DatasetError(f"{url}: download failed ({type(exc).__name__}: {exc})") from None
    except ValueError as exc:
        if "hash" in str(exc).lower():
            raise DatasetError(
                f"{url}: the downloaded file's SHA-256 does not match the expected {digest} "
                "(wrong --sha256, or the file changed or was corrupted); nothing was kept"
            ) from None
        raise DatasetError(f"{url}: {exc}") from None
