"""Image URLs against a local HTTP server on 127.0.0.1: the image read as from a file, http(s)
redirects followed, redirects to file:/ftp: refused, size cap with and without Content-Length,
a total deadline that cuts off slow and silent servers, and a clear error for each failure."""

import http.server
import threading
import time

import numpy as np
import pytest

from segfpn.imageio import ImageError, read_image
from segfpn.urls import URLImageError, fetch_url, is_url, read_url_image, url_file_name

from testdata import EXAMPLES

PHOTO = (EXAMPLES / "coffee.png").read_bytes()


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        path = self.path.split("?")[0]
        self.server.requests.append(path)
        if path == "/coffee.png":
            self.reply(200, PHOTO, "image/png")
        elif path.startswith("/to/"):  # /to/<status>/<target...>
            _, _, status, target = path.split("/", 3)
            self.send_response(int(status))
            self.send_header("Location", target if "://" in target else "/" + target)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/file-redirect":
            self.redirect("file:///etc/passwd")
        elif path == "/ftp-redirect":
            self.redirect("ftp://127.0.0.1/coffee.png")
        elif path == "/loop":
            self.redirect("/loop")
        elif path == "/announced-huge":
            self.send_response(200)
            self.send_header("Content-Length", str(10**9))
            self.end_headers()
            self.wfile.write(b"\0" * 1024)  # never the billion bytes
        elif path == "/endless":  # no Content-Length: the body goes on until we hang up
            self.send_response(200)
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b"\0" * 65536)
            except OSError:
                pass
        elif path == "/trickle":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PHOTO)))
            self.end_headers()
            try:
                for i in range(0, len(PHOTO), 64):
                    self.wfile.write(PHOTO[i:i + 64])
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass
        elif path == "/silent":
            time.sleep(5)
        elif path == "/page.html":
            self.reply(200, b"<html><body>not an image</body></html>", "text/html; charset=utf-8")
        elif path == "/bomb.png":
            self.reply(200, self.server.bomb, "image/png")
        else:
            self.reply(404, b"no", "text/plain")

    def redirect(self, location):
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def reply(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    import io

    from PIL import Image

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.requests = []
    bomb = io.BytesIO()
    Image.new("L", (9000, 9000)).save(bomb, format="PNG")  # 81 megapixels of zeros: a small file
    httpd.bomb = bomb.getvalue()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def test_image_url_reads_like_the_file(server):
    base, _ = server
    assert np.array_equal(read_url_image(f"{base}/coffee.png"), read_image(EXAMPLES / "coffee.png"))
    assert url_file_name(f"{base}/a/coffee.png?size=2") == "coffee.png" and url_file_name(f"{base}/") == "image"
    assert is_url("https://x/y.jpg") and is_url("file:///etc/passwd") and not is_url("photos/cat.jpg")


def test_http_redirects_are_followed(server):
    base, _ = server
    for status in (301, 302, 303, 307, 308):
        assert np.array_equal(read_url_image(f"{base}/to/{status}/coffee.png"), read_image(PHOTO))
    assert np.array_equal(read_url_image(f"{base}/to/302/{base}/coffee.png"), read_image(PHOTO))


@pytest.mark.parametrize("route, words", [("/file-redirect", "redirects to file:///etc/passwd: only http and https"),
                                          ("/ftp-redirect", "only http and https redirects"),
                                          ("/loop", "HTTP 30"),
                                          ("/missing.png", "HTTP 404"),
                                          ("/page.html", "text/html.*not an image"),
                                          ("/bomb.png", "too large: 81 megapixels")])
def test_refused_urls_say_why(server, route, words):
    base, _ = server
    with pytest.raises(URLImageError, match=words) as caught:
        read_url_image(base + route)
    assert isinstance(caught.value, ImageError) and base + route in str(caught.value)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x.png", "data:image/png;base64,AAAA",
                                 "gopher://127.0.0.1/x"])
def test_only_http_and_https_urls_are_opened(url):
    with pytest.raises(URLImageError, match="only http:// and https://"):
        fetch_url(url)


def test_size_cap_with_and_without_content_length(server):
    base, _ = server
    start = time.monotonic()
    with pytest.raises(URLImageError, match="1000000000 bytes, more than the 1000000 bytes"):
        fetch_url(f"{base}/announced-huge", max_bytes=10**6)
    with pytest.raises(URLImageError, match="sent more than the 1000000 bytes"):
        fetch_url(f"{base}/endless", max_bytes=10**6)
    assert time.monotonic() - start < 5
    body, content_type = fetch_url(f"{base}/coffee.png", max_bytes=len(PHOTO))
    assert body == PHOTO and content_type == "image/png"


@pytest.mark.parametrize("route", ["/trickle", "/silent"])
def test_deadline_cuts_off_slow_and_silent_servers(server, route):
    base, _ = server
    start = time.monotonic()
    with pytest.raises(URLImageError, match="did not arrive within 1 s"):
        fetch_url(base + route, deadline_s=1.0, timeout_s=30.0)  # the deadline, not the read timeout, ends it
    assert time.monotonic() - start < 2.5


def test_unreachable_host_is_an_error(server):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nobody listens there
    with pytest.raises(URLImageError, match="could not be fetched"):
        fetch_url(f"http://127.0.0.1:{port}/x.png", deadline_s=5)
