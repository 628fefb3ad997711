"""`derma download` against local imitations of the sources on 127.0.0.1.

HAM10000 (a Dataverse imitation): the native API file list, format=original for the ingested
table, resumable Range downloads after a truncated transfer, md5 verification, unpacking into the
raw layout, the offline message. ISIC (an S3-like server: ETag MD5s), PAD-UFES-20 (a Mendeley
Data file list with SHA-256s), DermaMNIST (MedMNIST's MD5s) and Fitzpatrick17k (images by URL:
resumed, rate-limited, failures reported): each result read back by the dataset's reader."""

from __future__ import annotations

import csv
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
from derma_core.data.datasets.ham10000 import DESCRIPTOR as HAM10000
from derma_core.data.raw import verify


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
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
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
    data = verify(HAM10000.reader(out, {}), HAM10000)  # derma prep reads the result as it is
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


# ---------------------------------------------------------------- the other public datasets

class FakeSource(BaseHTTPRequestHandler):
    """A static file server with what the sources publish: Content-Length, an ETag (the MD5, like
    S3's single-part uploads), Range requests; and faults: truncated or failing first answers."""

    files: dict = {}          # path (with query) -> (bytes, content type)
    etags: dict = {}          # path -> ETag to send instead of the MD5
    truncate_once: set = set()
    fail_once: set = set()    # answered 500 the first time
    requests: list = []

    def log_message(self, *args):
        pass

    def _lookup(self):
        type(self).requests.append((self.command, self.path, self.headers.get("Range")))
        if self.path not in self.files:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if self.path in self.fail_once:
            type(self).fail_once = self.fail_once - {self.path}
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        return self.files[self.path]

    def do_HEAD(self):
        found = self._lookup()
        if found is None:
            return
        data, ctype = found
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", f'"{self.etags.get(self.path, hashlib.md5(data).hexdigest())}"')
        self.end_headers()

    def do_GET(self):
        found = self._lookup()
        if found is None:
            return
        data, ctype = found
        start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
        body = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path in self.truncate_once:
            type(self).truncate_once = self.truncate_once - {self.path}
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture()
def source():
    FakeSource.files, FakeSource.etags, FakeSource.requests = {}, {}, []
    FakeSource.truncate_once, FakeSource.fail_once = set(), set()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeSource)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (seed * 30 % 255, 40, 200)).save(buf, format="PNG")
    return buf.getvalue()


QUIET = dict(progress=False, log=lambda m: None, sleep=lambda s: None)


def _gets(path_part: str) -> list:
    return [r for r in FakeSource.requests if r[0] == "GET" and path_part in r[1]]


def test_isic2019_download_resumes_checks_the_etag_unpacks_and_reads(source, tmp_path):
    from derma_core.data.datasets import isic2019

    ids = ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002"]
    gt = "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK\n" + "".join(
        f"{i},{'1.0' if k == 0 else '0.0'},{'1.0' if k else '0.0'},0.0,0.0,0.0,0.0,0.0,0.0,0.0\n"
        for k, i in enumerate(ids))
    meta = "image,age_approx,anatom_site_general,lesion_id,sex\n" + "".join(
        f"{i},55,anterior torso,BCN_000000{k // 2},female\n" for k, i in enumerate(ids))
    archive = _zip({f"ISIC_2019_Training_Input/{i}.jpg": _jpeg(k) for k, i in enumerate(ids)}
                   | {"ISIC_2019_Training_Input/LICENSE.txt": b"CC BY-NC"})
    FakeSource.files = {"/2019/ISIC_2019_Training_GroundTruth.csv": (gt.encode(), "text/csv"),
                        "/2019/ISIC_2019_Training_Metadata.csv": (meta.encode(), "text/csv"),
                        "/2019/ISIC_2019_Training_Input.zip": (archive, "application/zip")}
    FakeSource.truncate_once = {"/2019/ISIC_2019_Training_Input.zip"}
    out = tmp_path / "raw"
    dl.download_isic2019(out, server=source, **QUIET)
    ranged = [r for r in _gets("Input.zip") if r[2]]
    assert ranged and ranged[0][2] != "bytes=0-"  # resumed where the truncated transfer stopped
    assert (out / "ISIC_2019_Training_GroundTruth.csv").read_text() == gt
    assert sorted(p.name for p in (out / "ISIC_2019_Training_Input").iterdir()) == [f"{i}.jpg" for i in ids]
    assert not list(out.rglob("*.part"))
    raw = isic2019.read(out)  # derma prep reads the result as it is
    assert list(raw.metadata["dx"]) == ["mel", "nv", "nv"] and set(raw.images) == set(ids) and not raw.problems
    # again, deleting the archive: nothing is fetched; a third run does not fetch the archive again
    FakeSource.requests = []
    dl.download_isic2019(out, server=source, keep_archives=False, **QUIET)
    assert not _gets("/2019/") and not (out / "archives" / "ISIC_2019_Training_Input.zip").exists()
    dl.download_isic2019(out, server=source, **QUIET)
    assert not _gets("/2019/")


def test_s3_checksum_mismatch_multipart_etag_and_offline(source, tmp_path):
    FakeSource.files = {f"/2020/{name}": (b"image_name\nISIC_1\n", "text/csv") for name in
                        ("ISIC_2020_Training_GroundTruth.csv", "ISIC_2020_Training_Duplicates.csv")}
    FakeSource.files["/2020/ISIC_2020_Training_JPEG.zip"] = (_zip({"train/ISIC_1.jpg": _jpeg(1)}), "application/zip")
    FakeSource.etags = {"/2020/ISIC_2020_Training_GroundTruth.csv": "0" * 32,
                        "/2020/ISIC_2020_Training_JPEG.zip": "9b2cf535f27731c974343645a3985328-2"}  # multipart
    with pytest.raises(dl.DownloadError, match="ISIC_2020_Training_GroundTruth.csv: checksum mismatch"):
        dl.download_isic2020(tmp_path / "raw", server=source, **QUIET)
    assert not list((tmp_path / "raw").glob("ISIC_2020_Training_GroundTruth.csv*"))
    FakeSource.etags.pop("/2020/ISIC_2020_Training_GroundTruth.csv")
    dl.download_isic2020(tmp_path / "raw", server=source, **QUIET)  # a multipart ETag is no checksum: accepted
    assert (tmp_path / "raw" / "train" / "ISIC_1.jpg").exists()
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(dl.DownloadError, match=r"offline.*challenge.isic-archive.com/data/#2020 by hand"):
        dl.download_isic2020(tmp_path / "other", server=f"http://127.0.0.1:{port}", **QUIET)


def _mendeley_listing(source: str, files: dict, bad_sha: set = frozenset()) -> bytes:
    entries = [{"filename": name, "content_details": {
        "download_url": f"{source}/files/{name}", "size": len(data),
        "sha256_hash": "0" * 64 if name in bad_sha else hashlib.sha256(data).hexdigest()}}
        for name, data in files.items()]
    return json.dumps(entries).encode()


def test_pad_ufes_20_from_mendeley_data(source, tmp_path):
    from derma_core.data.datasets import pad_ufes_20

    header = ",".join(pad_ufes_20.COLUMNS)
    blank = dict.fromkeys(pad_ufes_20.COLUMNS, "")

    def row(patient, img, dx):
        values = {**blank, "patient_id": patient, "img_id": img, "diagnostic": dx}
        return ",".join(values[c] for c in pad_ufes_20.COLUMNS)

    metadata = "\n".join([header, row("PAT_1", "PAT_1_2_3.png", "NEV"), row("PAT_1", "PAT_1_5_6.png", "SEK"),
                          row("PAT_7", "PAT_7_8_9.png", "MEL")]).encode() + b"\n"
    files = {"metadata.csv": metadata,
             "imgs_part_1.zip": _zip({"imgs_part_1/PAT_1_2_3.png": _png(1), "imgs_part_1/PAT_1_5_6.png": _png(2)}),
             "imgs_part_2.zip": _zip({"PAT_7_8_9.png": _png(3)})}  # a flat archive
    FakeSource.files = {f"/files/{name}": (data, "application/octet-stream") for name, data in files.items()}
    listing = "/api/datasets/zr7vgbcyr2/files?version=1"
    FakeSource.files[listing] = (_mendeley_listing(source, files, bad_sha={"imgs_part_2.zip"}), "application/json")
    out = tmp_path / "raw"
    with pytest.raises(dl.DownloadError, match="imgs_part_2.zip: checksum mismatch .*Mendeley Data says"):
        dl.download_pad_ufes_20(out, server=source, **QUIET)
    FakeSource.files[listing] = (_mendeley_listing(source, files), "application/json")
    dl.download_pad_ufes_20(out, server=source, **QUIET)
    assert (out / "images" / "imgs_part_1" / "PAT_1_2_3.png").exists()
    assert (out / "images" / "imgs_part_2" / "PAT_7_8_9.png").exists()
    raw = pad_ufes_20.read(out)
    assert list(raw.metadata["dx"]) == ["nev", "sek", "mel"] and set(raw.images) == set(raw.metadata["image_id"])
    FakeSource.files[listing] = (_mendeley_listing(source, {"metadata.csv": metadata}), "application/json")
    with pytest.raises(dl.DownloadError, match="lists metadata.csv for zr7vgbcyr2.*by hand"):
        dl.download_pad_ufes_20(tmp_path / "other", server=source, **QUIET)


def test_dermamnist_is_checked_against_medmnist_md5(source, tmp_path, monkeypatch):
    data = b"not really an npz but bytes with a known md5"
    FakeSource.files = {"/records/10519652/files/dermamnist_64.npz?download=1": (data, "application/octet-stream")}
    with pytest.raises(dl.DownloadError, match="dermamnist_64.npz: checksum mismatch .*MedMNIST says b70a2f56"):
        dl.download_dermamnist(tmp_path, {"size": "64"}, server=source, **QUIET)
    assert not list(tmp_path.iterdir())
    monkeypatch.setitem(dl.DERMAMNIST_MD5, 64, hashlib.md5(data).hexdigest())
    dl.download_dermamnist(tmp_path, {"size": "64"}, server=source, **QUIET)
    assert (tmp_path / dl.dermamnist_filename(64)).read_bytes() == data
    with pytest.raises(dl.DownloadError, match="no 32 px version"):
        dl.download_dermamnist(tmp_path, sizes=[32], server=source, **QUIET)


def test_fitzpatrick17k_images_resume_rate_limit_and_report_failures(source, tmp_path):
    out = tmp_path / "raw"
    out.mkdir()
    rows = {"a" * 32: ("/img/a.jpg", (_jpeg(1), "image/jpeg")), "b" * 32: ("/img/b.png", (_png(2), "image/png")),
            "c" * 32: ("/img/c.jpg", None),  # 404
            "d" * 32: ("/img/d.jpg", (b"<html>moved</html>", "text/html")),
            "e" * 32: ("", None),  # no url in the CSV
            "f" * 32: ("/img/f.jpg", (_jpeg(6), "image/jpeg"))}
    for path, served in rows.values():
        if path and served:
            FakeSource.files[path] = served
    FakeSource.fail_once = {"/img/f.jpg"}  # a 500, then the image
    table = out / "fitzpatrick17k.csv"

    def write_csv(keys):
        table.write_text("md5hash,fitzpatrick_scale,label,url\n" + "".join(
            f"{k},3,acne,{source + rows[k][0] if rows[k][0] else ''}\n" for k in keys))

    write_csv(rows)
    with pytest.raises(dl.DownloadError, match=r"3 of 6 Fitzpatrick17k images could not be fetched .*"
                                               r"run the command again"):
        dl.download_fitzpatrick17k(out, interval=0, retries=1, **QUIET)
    images = out / "images"
    assert sorted(p.name for p in images.iterdir()) == ["a" * 32 + ".jpg", "b" * 32 + ".png", "f" * 32 + ".jpg"]
    report = {r["md5hash"]: r["reason"] for r in csv.DictReader(open(out / dl.FAILURE_REPORT))}
    assert report == {"c" * 32: "HTTP 404 Not Found", "d" * 32: report["d" * 32], "e" * 32: "no url in the CSV"}
    assert report["d" * 32].startswith("not a JPEG or PNG image")
    # again, the missing image now served: only the missing ones are asked for
    FakeSource.files["/img/c.jpg"] = (_jpeg(3), "image/jpeg")
    FakeSource.requests = []
    with pytest.raises(dl.DownloadError, match="2 of 6"):
        dl.download_fitzpatrick17k(out, interval=0, retries=1, **QUIET)
    assert sorted(r[1] for r in _gets("/img/")) == ["/img/c.jpg", "/img/d.jpg"]
    assert (images / ("c" * 32 + ".jpg")).exists()
    # every row fetchable: success, and the stale report goes
    write_csv([k for k in rows if k not in ("d" * 32, "e" * 32)])
    dl.download_fitzpatrick17k(out, interval=0, retries=1, **QUIET)
    assert not (out / dl.FAILURE_REPORT).exists()


def test_fitzpatrick17k_official_csv_is_pinned_by_checksum(source, tmp_path):
    pinned = f"/mattgroh/fitzpatrick17k/{dl.FITZPATRICK17K_COMMIT}/fitzpatrick17k.csv"
    FakeSource.files = {pinned: (b"md5hash,url\nabc,\n", "text/csv")}
    with pytest.raises(dl.DownloadError, match="fitzpatrick17k.csv: checksum mismatch"):
        dl.download_fitzpatrick17k(tmp_path, server=source, interval=0, **QUIET)
    assert not (tmp_path / "fitzpatrick17k.csv").exists()


def test_rate_limiter_spaces_requests_per_host():
    now, slept = [100.0], []
    limiter = dl.RateLimiter(1.5, clock=lambda: now[0], sleep=slept.append)
    assert [limiter.wait("a"), limiter.wait("a"), limiter.wait("b"), limiter.wait("a")] == [0, 1.5, 0, 3.0]
    assert slept == [1.5, 3.0]
    now[0] += 10
    assert limiter.wait("a") == 0


def test_every_downloader_takes_the_common_keywords():
    import inspect

    from derma_core.data.datasets import builtin_descriptors

    keywords = {"server", "retries", "keep_archives", "log", "sleep", "timeout"}
    public = ("isic2019", "isic2020", "pad_ufes_20", "fitzpatrick17k")
    functions = {d.downloader for d in builtin_descriptors() if d.name in public} | {dl.download_ham10000,
                                                                                     dl.download_dermamnist}
    assert dl.download_fitzpatrick17k in functions and dl.download_pad_ufes_20 in functions
    for function in functions:
        params = inspect.signature(function).parameters
        assert list(params)[:3] == ["out", "options", "progress"], function.__name__
        assert keywords <= set(params), function.__name__
