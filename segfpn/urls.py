"""Images from http(s) URLs: fetched with limits, then checked like any file.

:func:`fetch_url` takes ``http://`` and ``https://`` URLs only, follows at most
:data:`MAX_REDIRECTS` redirects and only to http(s) (never to ``file:``, ``ftp:``, ``data:``...),
stops at :data:`MAX_URL_BYTES` whether or not the server announces the length, and gives up
when the whole fetch (connecting, redirects, body) passes ``deadline_s``: a silent or trickling
server is cut off then, not at some later read. :func:`read_url_image` decodes the bytes with
:func:`segfpn.imageio.read_image` (every check of a file applies). Every failure is a
:class:`URLImageError`, an :class:`~segfpn.imageio.ImageError`, naming the URL and the reason.
"""

from __future__ import annotations

import http.client
import logging
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np

from segfpn.imageio import MAX_MEGAPIXELS, ImageError, read_image
from segfpn.net import ReportingHTTPHandler, ReportingHTTPSHandler, SocketWatch

logger = logging.getLogger(__name__)

#: Largest body accepted, in bytes (a 40-megapixel PNG can be ~100 MB; a JPEG of it ~20 MB).
MAX_URL_BYTES = 64 * 1024 * 1024
#: Seconds a whole fetch may take by default.
DEFAULT_DEADLINE_S = 30.0
#: Seconds to connect, and for each read, by default (never beyond the deadline).
DEFAULT_TIMEOUT_S = 10.0
MAX_REDIRECTS = 5
_SCHEMES = ("http", "https")
_CHUNK = 1 << 16
_USER_AGENT = "segfpn (+urllib)"


class URLImageError(ImageError):
    """An image URL that could not be fetched or is not an image; the message says why."""


def is_url(text: str) -> bool:
    """Whether ``text`` is meant as a URL (``scheme://...``) rather than a path."""
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", str(text)))


def url_file_name(url: str) -> str:
    """The last path segment of ``url`` (``https://host/a/cat.jpg?x=1`` -> ``cat.jpg``), or
    ``image`` when it has none."""
    name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
    return name or "image"


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    max_redirections = MAX_REDIRECTS

    def http_error_302(self, req, fp, code, msg, headers):
        location = headers.get("location") or headers.get("uri")
        if location is not None:
            target = urllib.parse.urljoin(req.full_url, location)
            if urllib.parse.urlsplit(target).scheme.lower() not in _SCHEMES:
                fp.close()
                raise URLImageError(f"{req.full_url} redirects to {target}: only http and https redirects are followed")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _opener(sockets: SocketWatch) -> urllib.request.OpenerDirector:
    """http(s) only: no file, ftp or data handlers at all, proxies from the environment."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), ReportingHTTPHandler(sockets.add),
                    ReportingHTTPSHandler(sockets.add), _RedirectHandler(),
                    urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def fetch_url(url: str, *, max_bytes: int = MAX_URL_BYTES, deadline_s: float = DEFAULT_DEADLINE_S,
              timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[bytes, str]:
    """(body, content type) of an http(s) URL within the limits of the module docstring;
    :class:`URLImageError` otherwise."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in _SCHEMES:
        raise URLImageError(f"{url}: only http:// and https:// URLs are read, not {scheme or 'this'}:")
    if not 0 < deadline_s < float("inf") or max_bytes < 1:
        raise ValueError(f"deadline_s must be a number of seconds above 0 and max_bytes at least 1, "
                         f"got {deadline_s}, {max_bytes}")
    sockets = SocketWatch()
    timer = threading.Timer(deadline_s, sockets.shut_all)
    timer.daemon = True
    timer.start()
    start = time.monotonic()
    received = 0

    def late(detail: str) -> URLImageError:
        return URLImageError(f"{url} did not arrive within {deadline_s:g} s ({detail}): a slow or silent server?")

    try:
        request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT, "Accept": "image/*"})
        try:
            response = _opener(sockets).open(request, timeout=min(timeout_s, deadline_s))
        except urllib.error.HTTPError as exc:
            exc.close()
            raise URLImageError(f"{url}: the server answered HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            if sockets.shut_down or time.monotonic() - start >= deadline_s:
                raise late("no answer") from None
            reason = getattr(exc, "reason", exc)
            raise URLImageError(f"{url} could not be fetched: {reason}") from None
        with response:
            length = response.headers.get("Content-Length")
            if length is not None and length.strip().isdigit() and int(length) > max_bytes:
                raise URLImageError(f"{url} is {int(length)} bytes, more than the {max_bytes} bytes an image URL may "
                                    "have: download it and pass the file")
            read = getattr(response, "read1", response.read)
            chunks = []
            while True:
                try:
                    chunk = read(_CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    if sockets.shut_down:
                        raise late(f"{received} bytes received") from None
                    raise URLImageError(f"{url}: the connection broke after {received} bytes: {exc}") from None
                if sockets.shut_down:
                    raise late(f"{received} bytes received")
                if not chunk:
                    break
                received += len(chunk)
                if received > max_bytes:
                    raise URLImageError(f"{url} sent more than the {max_bytes} bytes an image URL may have; "
                                        "stopped there: download it and pass the file")
                chunks.append(chunk)
            content_type = response.headers.get("Content-Type", "")
    finally:
        timer.cancel()
    logger.info("fetched %s (%d bytes, %s)", url, received, content_type or "no content type")
    return b"".join(chunks), content_type


def read_url_image(url: str, *, max_bytes: int = MAX_URL_BYTES, deadline_s: float = DEFAULT_DEADLINE_S,
                   timeout_s: float = DEFAULT_TIMEOUT_S, max_megapixels: float = MAX_MEGAPIXELS) -> np.ndarray:
    """The image at an http(s) URL as RGB uint8 [H, W, 3] (:func:`segfpn.imageio.read_image` on
    the body); :class:`URLImageError` for anything that fails."""
    body, content_type = fetch_url(url, max_bytes=max_bytes, deadline_s=deadline_s, timeout_s=timeout_s)
    try:
        return read_image(body, max_megapixels=max_megapixels)
    except ImageError as exc:
        what = f" (the server says it is {content_type.split(';')[0]})" if content_type else ""
        raise URLImageError(f"{url}{what}: {exc}") from None
