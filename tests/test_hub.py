"""Downloads against a real HTTP server on 127.0.0.1: caching, hashes, errors, and pretrained=True through it."""
import hashlib
import http.server
import os
import socket
import threading

import pytest
import torch

import qtvit
from qtvit import hub
from qtvit.hub import DownloadError

from _tiny_model import TinyNet, randomize, registered

PAYLOAD = os.urandom(3 * (1 << 20) + 17)  # more than one read chunk


class _Server:
    """Serves ``files`` (path -> bytes) and counts the requests; everything else is a 404."""

    def __init__(self, files):
        self.files, self.requests = files, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    with _Server({"/w/weights.pt": PAYLOAD}) as s:
        yield s


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


def test_download_caches_and_reuses(server, tmp_path):
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    path = hub.download(f"{server.url}/w/weights.pt", cache_dir=tmp_path, sha256=sha, progress=False)
    assert path == tmp_path / "weights.pt" and path.read_bytes() == PAYLOAD
    assert os.listdir(tmp_path) == ["weights.pt"]  # no partial file left behind
    again = hub.download(f"{server.url}/w/weights.pt", cache_dir=tmp_path, sha256=sha[:12], progress=False)
    assert again == path and server.requests == ["/w/weights.pt"]  # the second call made no request


def test_cache_dir_from_environment(server, tmp_path, monkeypatch):
    monkeypatch.setenv("QTVIT_CACHE", str(tmp_path / "env"))
    assert hub.get_cache_dir() == tmp_path / "env"
    assert hub.download(f"{server.url}/w/weights.pt", progress=False) == tmp_path / "env" / "weights.pt"
    monkeypatch.delenv("QTVIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.get_cache_dir() == tmp_path / "xdg" / "qtvit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert hub.get_cache_dir() == hub.Path.home() / ".cache" / "qtvit"


def test_http_404(server, tmp_path):
    with pytest.raises(DownloadError, match=r"missing\.pt failed: HTTP 404 .*put it at .*missing\.pt"):
        hub.download(f"{server.url}/w/missing.pt", cache_dir=tmp_path, progress=False)
    assert os.listdir(tmp_path) == []


def test_hash_mismatch_caches_nothing(server, tmp_path):
    with pytest.raises(DownloadError, match=r"has sha256 [0-9a-f]{64}, expected 00000000"):
        hub.download(f"{server.url}/w/weights.pt", cache_dir=tmp_path, sha256="0" * 64, progress=False)
    assert os.listdir(tmp_path) == []
    # a cached file that does not match is no longer reused forever: it is deleted and downloaded again, once
    (tmp_path / "weights.pt").write_bytes(b"something else")
    path = hub.download(f"{server.url}/w/weights.pt", cache_dir=tmp_path, sha256=hashlib.sha256(PAYLOAD).hexdigest(),
                        progress=False)
    assert path.read_bytes() == PAYLOAD and server.requests == ["/w/weights.pt"] * 2
    with pytest.raises(ValueError, match="too short"):
        hub.download(f"{server.url}/w/weights.pt", cache_dir=tmp_path, sha256="abc")


def test_offline_error_says_where_to_put_the_file(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/w/efficientvit_b1_r224.pt"
    with pytest.raises(DownloadError) as e:
        hub.download(url, cache_dir=tmp_path, progress=False, timeout=5)
    msg = str(e.value)
    assert f"cannot download {url}" in msg
    assert f"put it at {tmp_path / 'efficientvit_b1_r224.pt'}" in msg and "checkpoint_path=" in msg
    assert os.listdir(tmp_path) == []


def _tinynet_url(pretrained=False, **kwargs):
    model = TinyNet(**kwargs)
    model.pretrained_cfg = dict(model.pretrained_cfg, url="https://example.invalid/files/tiny_r32.pt")
    return model


def test_pretrained_through_url_base(tmp_path, monkeypatch):
    src = randomize(TinyNet())
    torch.save({"state_dict": src.state_dict()}, tmp_path / "tiny_r32.pt")
    with _Server({"/mirror/tiny_r32.pt": (tmp_path / "tiny_r32.pt").read_bytes()}) as s, registered(_tinynet_url):
        monkeypatch.setenv("QTVIT_CACHE", str(tmp_path / "cache"))
        monkeypatch.setenv("QTVIT_PRETRAINED_URL_BASE", s.url + "/mirror/")
        model = qtvit.create_model("_tinynet_url", pretrained=True).eval()
        qtvit.create_model("_tinynet_url", pretrained=True)  # from the cache
        assert s.requests == ["/mirror/tiny_r32.pt"]
    assert sorted(os.listdir(tmp_path / "cache")) == [".tinynet.pt.sha256", "tinynet.pt"]  # under cfg["file"]
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(model(x), src(x), rtol=0, atol=0)


def test_pretrained_without_url(tmp_path, monkeypatch):
    monkeypatch.setenv("QTVIT_CACHE", str(tmp_path))
    with registered() as name:
        with pytest.raises(ValueError, match=rf"{name} has no downloadable pretrained weights.*put the file at "
                                             rf"{tmp_path / 'tinynet.pt'}.*checkpoint_path="):
            qtvit.create_model(name, pretrained=True)
        # a file the user put in the cache by hand is used
        src = randomize(TinyNet())
        torch.save({"state_dict": src.state_dict()}, tmp_path / "tinynet.pt")
        model = qtvit.create_model(name, pretrained=True)
        assert torch.equal(model.head.weight, src.head.weight)


@pytest.mark.skipif("efficientvit_b1" not in qtvit.list_models(), reason="efficientvit not registered yet")
def test_real_pretrained_cfgs_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("QTVIT_CACHE", str(tmp_path))
    monkeypatch.setenv("QTVIT_PRETRAINED_URL_BASE", f"http://127.0.0.1:{_closed_port()}/")
    with pytest.raises(DownloadError, match=rf"put it at {tmp_path / 'efficientvit_b1_r224.pt'}"):
        qtvit.create_model("efficientvit_b1", pretrained=True)
    # QT-ViT weights are on Google Drive only: the error points there and at the cache file name
    with pytest.raises(ValueError, match=rf"published at https://drive\.google\.com/.*{tmp_path / 'qtvit_1_r224.pt'}"):
        qtvit.create_model("qtvit_1", pretrained=True)


# ------------------------------------------------------------------------------------------------ verified reuse


def test_recorded_digest_catches_a_damaged_cache(server, tmp_path):
    url = f"{server.url}/w/weights.pt"
    path = hub.download(url, cache_dir=tmp_path, progress=False)
    sidecar = tmp_path / ".weights.pt.sha256"
    assert sidecar.read_text().strip() == hashlib.sha256(PAYLOAD).hexdigest()
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()  # readable like any file the user writes
    assert hub.download(url, cache_dir=tmp_path, progress=False) == path and len(server.requests) == 1
    path.write_bytes(PAYLOAD[:1000])  # truncated later (a full disk, a killed copy)
    assert hub.download(url, cache_dir=tmp_path, progress=False).read_bytes() == PAYLOAD
    assert len(server.requests) == 2
    # offline, a damaged cached file is not handed out: it is removed and the error says how to get it
    path.write_bytes(b"damaged")
    offline = f"http://127.0.0.1:{_closed_port()}/w/weights.pt"
    with pytest.raises(DownloadError, match=r"cannot download .*put it at"):
        hub.download(offline, cache_dir=tmp_path, progress=False, timeout=5)
    assert not path.exists() and not sidecar.exists()


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_unreadable_cached_checkpoint_is_downloaded_again(tmp_path, monkeypatch):
    from qtvit.models._pretrained import pretrained_file

    src = randomize(TinyNet())
    torch.save({"state_dict": src.state_dict()}, tmp_path / "tiny.pt")
    good = (tmp_path / "tiny.pt").read_bytes()
    monkeypatch.setenv("QTVIT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "tiny.pt").write_bytes(good[:300])  # put there by hand, truncated: no digest to compare
    with _Server({"/w/tiny.pt": good, "/w/html.pt": b"<html>quota exceeded</html>"}) as s:
        cfg = {"url": f"{s.url}/w/tiny.pt"}
        path = pretrained_file("tiny", cfg, progress=False)
        assert open(path, "rb").read() == good and s.requests == ["/w/tiny.pt"]
        assert pretrained_file("tiny", cfg, progress=False) == path and s.requests == ["/w/tiny.pt"]
        # a server that answers with something that is not a checkpoint: nothing is cached, the error says so
        with pytest.raises(DownloadError, match=r"downloaded from .*html\.pt cannot be used .*nothing was cached"):
            pretrained_file("tiny", {"url": f"{s.url}/w/html.pt"}, progress=False)
    assert sorted(os.listdir(tmp_path / "cache")) == [".tiny.pt.sha256", "tiny.pt"]
    model = TinyNet()
    model.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    assert torch.equal(model.head.weight, src.head.weight)


def test_fashion_mnist_downloads_through_the_hub(tmp_path, monkeypatch):
    from pathlib import Path

    import qtvit.data.fashion_mnist as fm
    from conftest import SMALL_FMNIST

    files = {f"/fm/{p.name}": p.read_bytes() for p in Path(SMALL_FMNIST).glob("*.gz")}
    monkeypatch.delenv("QTVIT_FASHION_MNIST", raising=False)
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "no-debian-package")
    monkeypatch.setenv("QTVIT_CACHE", str(tmp_path / "cache"))
    with _Server(files) as s:
        monkeypatch.setattr(fm, "_MIRRORS", (s.url + "/fm/",))
        folder = fm.find_fashion_mnist()
        assert folder == tmp_path / "cache" / "fashion-mnist" and len(s.requests) == 4
        images, labels = fm.load_fashion_mnist("test")
        assert images.shape[1:] == (28, 28) and len(images) == len(labels) > 0
        victim = folder / "t10k-labels-idx1-ubyte.gz"
        victim.write_bytes(victim.read_bytes()[:20])  # damaged in the cache: fetched again when next used
        assert fm.find_fashion_mnist() == folder and s.requests[4:] == ["/fm/t10k-labels-idx1-ubyte.gz"]
    assert torch.equal(fm.load_fashion_mnist("test")[1], labels)
