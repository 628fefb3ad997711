"""`derma download ham10000` against a local Dataverse imitation on 127.0.0.1: the native API file
list, format=original for the ingested table, resumable Range downloads after a truncated
transfer, md5 verification, unpacking into the raw layout, and the offline message."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner
from PIL import Image

from derma_core.data import download as dl
from derma_core.data.raw import scan_raw


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (60, 45), (seed * 40 % 255, 90, 120)).save(buf, format="JPEG")
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


METADATA = ("lesion_id,image_id,dx,dx_type,age,sex,localization\n"
            "HAM_0000001,ISIC_0000001,nv,follow_up,45.0,male,back\n"
            "HAM_0000001,ISIC_0000002,nv,follow_up,45.0,male,back\n"
            "HAM_0000002,ISIC_0000003,mel,histo,60.0,female,face\n").encode()
TAB = METADATA.replace(b",", b"\t")  # what Dataverse serves without format=original

FILES = {
    # flat archive (images at the top level), as on Dataverse
    1: ("HAM10000_images_part_1.zip", _zip({"ISIC_0000001.jpg": _jpeg(1), "ISIC_0000002.jpg": _jpeg(2)})),
    # an archive with its own top folder
    2: ("HAM10000_images_part_2.zip", _zip({"HAM10000_images_part_2/ISIC_0000003.jpg": _jpeg(3)})),
    3: ("HAM10000_metadata.tab", METADATA),
    4: ("ISIC2018_Task3_Test_Images.zip", b"not needed"),
}


class FakeDataverse(BaseHTTPRequestHandler):
    truncate_once: set = set()   # file ids whose first transfer stops halfway
    bad_md5: set = set()         # file ids whose listed checksum is wrong
    requests: list = []

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        type(self).requests.append((self.path, self.headers.get("Range")))
        if self.path.startswith("/api/datasets/:persistentId/"):
            files = []
            for fid, (label, data) in FILES.items():
                md5 = "0" * 32 if fid in self.bad_md5 else hashlib.md5(data).hexdigest()
                entry = {"id": fid, "filename": label, "filesize": len(data), "checksum": {"type": "MD5", "value": md5}}
                if label.endswith(".tab"):
                    entry.update(originalFileFormat="text/csv", originalFileSize=len(data), filesize=len(TAB))
                files.append({"label": label, "dataFile": entry})
            body = json.dumps({"status": "OK", "data": {"latestVersion": {"files": files}}}).encode()
            return self._send(200, body, "application/json")
        if self.path.startswith("/api/access/datafile/"):
            fid = int(self.path.split("/")[-1].split("?")[0])
            label, data = FILES[fid]
            if label.endswith(".tab") and "format=original" not in self.path:
                data = TAB
            start = 0
            rng = self.headers.get("Range")
            if rng:
                start = int(rng.split("=")[1].split("-")[0])
                if start >= len(data):
                    return self._send(416, b"", "text/plain")
            body = data[start:]
            self.send_response(206 if rng else 200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(body)))
            if rng:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if fid in self.truncate_once:
                type(self).truncate_once = self.truncate_once - {fid}
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)
            return
        self._send(404, b"not found", "text/plain")

    def _send(self, code, body, ctype):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def server():
    FakeDataverse.truncate_once, FakeDataverse.bad_md5, FakeDataverse.requests = set(), set(), []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeDataverse)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_resumes_truncated_transfer_and_unpacks(server, tmp_path):
    FakeDataverse.truncate_once = {1}
    out = tmp_path / "raw"
    dl.download_ham10000(out, server=server, progress=False, log=lambda m: None, sleep=lambda s: None)
    ranged = [(p, r) for p, r in FakeDataverse.requests if p.endswith("/datafile/1") and r]
    assert ranged and ranged[0][1] != "bytes=0-"  # the second request resumed where the first stopped
    assert any(p.endswith("/datafile/3?format=original") for p, _ in FakeDataverse.requests)
    assert not any(p.endswith("/datafile/4") for p, _ in FakeDataverse.requests)  # unneeded files skipped
    assert (out / "HAM10000_metadata.csv").read_bytes() == METADATA
    assert sorted(p.name for p in (out / "HAM10000_images_part_1").iterdir()) == ["ISIC_0000001.jpg", "ISIC_0000002.jpg"]
    assert (out / "HAM10000_images_part_2" / "ISIC_0000003.jpg").exists()
    assert not list(out.rglob("*.part"))
    data = scan_raw(out)  # derma prep reads the result as it is
    assert len(data.metadata) == 3 and not data.fatal
    # running again downloads nothing new
    FakeDataverse.requests = []
    dl.download_ham10000(out, server=server, progress=False, log=lambda m: None)
    assert not any("/datafile/" in p for p, _ in FakeDataverse.requests)


def test_bad_checksum_is_refused(server, tmp_path):
    FakeDataverse.bad_md5 = {2}
    from derma_core.cli import cli

    result = CliRunner().invoke(cli, ["download", "ham10000", "--out", str(tmp_path / "raw"), "--server", server, "-q"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "HAM10000_images_part_2.zip: checksum mismatch" in lines[0]
    assert not (tmp_path / "raw" / "archives" / "HAM10000_images_part_2.zip.part").exists()
    assert not (tmp_path / "raw" / "archives" / "HAM10000_images_part_2.zip").exists()


def test_transfer_that_keeps_failing_keeps_the_partial_file(server, tmp_path, monkeypatch):
    original = FakeDataverse.do_GET

    def always_truncate(self):
        type(self).truncate_once = {1}
        original(self)

    monkeypatch.setattr(FakeDataverse, "do_GET", always_truncate)
    with pytest.raises(dl.DownloadError, match="run the command again to resume"):
        dl.download_ham10000(tmp_path / "raw", server=server, retries=2, progress=False, log=lambda m: None,
                             sleep=lambda s: None)
    part = tmp_path / "raw" / "archives" / "HAM10000_images_part_1.zip.part"
    assert 0 < part.stat().st_size < len(FILES[1][1])


def test_offline_gives_one_line(tmp_path):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from derma_core.cli import cli

    result = CliRunner().invoke(cli, ["download", "ham10000", "--out", str(tmp_path / "raw"),
                                      "--server", f"http://127.0.0.1:{port}", "-q"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "offline" in lines[0] and "by hand" in lines[0] and "10.7910/DVN/DBW86T" in lines[0]


def test_zip_slip_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    archive.write_bytes(_zip({"../../escape.jpg": _jpeg(1)}))
    with pytest.raises(ValueError, match="escapes"):
        dl.safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "escape.jpg").exists()
