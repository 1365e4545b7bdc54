#!/usr/bin/env python3
"""Write a registry for garbage-collection benchmarks straight into a storage
layout (no server, no pushes: seconds instead of hours).

Each repository holds four images of one config and three layers each: two
tagged (live) and two whose manifests were deleted, so half of all blobs (the
deleted images' manifests, configs and layers) are garbage. Their layer links
stay, as a manifest delete leaves them. Every file is dated --age-hours back,
past any grace period.

Layouts:
  berth-fs      berth serve --storage DIR
  berth-s3      Berth's S3 keys, for an s3s-fs bucket folder (s3s-fs serves files as objects)
  distribution  distribution 2.8.2's filesystem driver layout (also the keys its s3 driver
                uses, so an s3s-fs bucket folder works as well)

  gc-fixture.py LAYOUT ROOT [--repos 5000] [--age-hours 2] [--jobs 16]
Blobs written: 20 per repository (5000 repositories: 100,000 blobs).
"""
import argparse
import base64
import hashlib
import json
import os
import time

MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


_made = set()


def write(path, data, when):
    # Folders are made once per run: at 1,000,000 blobs the makedirs calls
    # (a stat per level) cost more than the writes.
    folder = os.path.dirname(path)
    if folder not in _made:
        os.makedirs(folder, exist_ok=True)
        _made.add(folder)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.utime(fd, (when, when))
    finally:
        os.close(fd)


def b64(hexdigest):
    return base64.urlsafe_b64encode(bytes.fromhex(hexdigest)).decode().rstrip("=")


class Layout:
    def __init__(self, kind, root, when):
        self.kind, self.root, self.when = kind, root, when

    def blob(self, hexd, data):
        if self.kind == "berth-fs":
            key = f"blobs/sha256/{hexd[:2]}/{hexd}"
        elif self.kind == "berth-s3":
            key = f"blobs/sha256/{b64(hexd)}"
        else:
            key = f"docker/registry/v2/blobs/sha256/{hexd[:2]}/{hexd}/data"
        write(os.path.join(self.root, key), data, self.when)

    def layer_link(self, repo, hexd):
        if self.kind == "distribution":
            key = f"docker/registry/v2/repositories/{repo}/_layers/sha256/{hexd}/link"
            data = f"sha256:{hexd}".encode()
        else:
            d = hexd if self.kind == "berth-fs" else b64(hexd)
            key, data = f"repositories/{repo}/_layers/sha256/{d}", b""
        write(os.path.join(self.root, key), data, self.when)

    def manifest(self, repo, hexd, refs, tag):
        if self.kind == "distribution":
            base = f"docker/registry/v2/repositories/{repo}/_manifests"
            link = f"sha256:{hexd}".encode()
            for key in (f"{base}/revisions/sha256/{hexd}/link",
                        f"{base}/tags/{tag}/current/link",
                        f"{base}/tags/{tag}/index/sha256/{hexd}/link"):
                write(os.path.join(self.root, key), link, self.when)
            return
        d = hexd if self.kind == "berth-fs" else b64(hexd)
        meta = {"mediaType": MANIFEST, "references": [f"sha256:{r}" for r in refs]}
        write(os.path.join(self.root, f"repositories/{repo}/_manifests/sha256/{d}"),
              json.dumps(meta).encode(), self.when)
        write(os.path.join(self.root, f"repositories/{repo}/_tags/{tag}"),
              f"sha256:{hexd}".encode(), self.when)


def image(layout, repo, n, live):
    """One image: config, three layers, manifest. Returns blobs written."""
    def blob(data):
        hexd = hashlib.sha256(data).hexdigest()
        layout.blob(hexd, data)
        return hexd, len(data)

    config = blob(json.dumps({"repo": repo, "image": n}).encode())
    layers = [blob(f"layer {repo} {n} {i} ".encode() * 4) for i in range(3)]
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "size": config[1], "digest": f"sha256:{config[0]}"},
        "layers": [{"mediaType": LAYER, "size": s, "digest": f"sha256:{d}"} for d, s in layers],
    }).encode()
    mhex, _ = blob(manifest)
    for d, _ in [config] + layers:
        layout.layer_link(repo, d)
    if live:
        layout.manifest(repo, mhex, [config[0]] + [d for d, _ in layers], f"v{n}")
    return 5


def write_in_parallel(a):
    """Runs --jobs copies of this script, each writing every jobs-th repository."""
    import subprocess
    import sys
    base = [sys.executable, __file__, a.layout, a.root, "--repos", str(a.repos),
            "--age-hours", str(a.age_hours), "--jobs", str(a.jobs)]
    children = [subprocess.Popen(base + ["--part", str(k)], stdout=subprocess.DEVNULL)
                for k in range(a.jobs)]
    failed = [c.args for c in children if c.wait() != 0]
    if failed:
        sys.exit(f"gc-fixture.py: a writer failed: {failed[0]}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("layout", choices=["berth-fs", "berth-s3", "distribution"])
    p.add_argument("root")
    p.add_argument("--repos", type=int, default=5000)
    p.add_argument("--age-hours", type=float, default=2.0)
    p.add_argument("--jobs", type=int, default=1,
                   help="processes writing at once (file creation waits on the disk's journal, "
                        "so several writers go faster even on few cores)")
    p.add_argument("--part", type=int, default=-1, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.jobs > 1 and a.part < 0:
        write_in_parallel(a)
        print(f"{a.layout}: {a.repos} repositories, {a.repos * 20} blobs ({a.repos * 10} unreferenced) "
              f"in {a.root}, {a.jobs} writers")
        return
    layout = Layout(a.layout, a.root, time.time() - a.age_hours * 3600)
    if a.layout == "berth-fs":
        for folder in ("blobs", "repositories", "uploads", "tmp"):
            os.makedirs(os.path.join(a.root, folder), exist_ok=True)
    blobs = 0
    for r in range(max(a.part, 0), a.repos, a.jobs):
        repo = f"team{r % 50:02d}/app{r:05d}"
        for n in range(4):
            blobs += image(layout, repo, n, live=n < 2)
    if a.part < 0:
        print(f"{a.layout}: {a.repos} repositories, {blobs} blobs ({blobs // 2} unreferenced) in {a.root}")


if __name__ == "__main__":
    main()
