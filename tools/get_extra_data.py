"""Extract the extra public face data of ``../shared/notes/more-data.md`` from git snapshots (never into the repo).

The search tool's ``fetch`` (``github:<owner>/<name>``) brings a bare snapshot of a public repository onto this
machine (``/work/.mirror/<owner>+<name>/repo``). This script lists one folder of that snapshot at a pinned commit,
checks which blobs the snapshot really holds (snapshots lack files of 4 MiB and more), and extracts the others
with ``git archive <commit> <folder> ':(exclude)<missing>' | tar -x -C <dest>`` -- the same command as in the note,
with the absent files excluded (a plain ``git archive`` stops at the first missing blob). It writes
``<dest>/<source>.manifest.json``: the commit, the folder, every extracted file with its size and git blob id, and
the files the snapshot lacked.

Sources (the photos are scraped from the web; research-only, see README "Data sources and licences"):

==================  ===========================================  =========================  ==========================
name                repository                                   folders                    commit
==================  ===========================================  =========================  ==========================
face-mask-detection chandrikadeb7/Face-Mask-Detection            dataset/with_mask,         7e500749401b (README: MIT
                                                                 dataset/without_mask       code; photos from the web)
utkface             Mohanish-5744/Major_Ensemble_Gender          crop_part1                 2f8aa4a5932c (UTKFace crops:
                                                                                            non-commercial research)
==================  ===========================================  =========================  ==========================

Example (after ``fetch github:chandrikadeb7/Face-Mask-Detection`` and ``fetch github:Mohanish-5744/Major_Ensemble_Gender``)::

    python tools/get_extra_data.py --source face-mask-detection \
        --snapshot /work/.mirror/chandrikadeb7+Face-Mask-Detection/repo --dest /work/shared-extra/face_mask_detection
    python tools/get_extra_data.py --source utkface \
        --snapshot /work/.mirror/Mohanish-5744+Major_Ensemble_Gender/repo --dest /work/shared-extra/utkface

Never extract into this repository: ``--dest`` inside the working tree is refused.
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("tools.get_extra_data")


@dataclass(frozen=True)
class Source:
    """One public snapshot folder set."""

    repository: str
    commit: str
    folders: tuple[str, ...]
    licence: str


SOURCES: dict[str, Source] = {
    "face-mask-detection": Source(
        "chandrikadeb7/Face-Mask-Detection", "7e500749401bad4bb338790fbdb89b58e41ef2d9",
        ("dataset/with_mask", "dataset/without_mask"),
        "repository code MIT; the photos are scraped from the web (no identities): research use only"),
    "utkface": Source(
        "Mohanish-5744/Major_Ensemble_Gender", "2f8aa4a5932c395d465f4f58d864b6a17a1b03f6", ("crop_part1",),
        "UTKFace cropped faces: non-commercial research use only"),
}


def _git(snapshot: Path, *args: str, stdin: bytes | None = None) -> bytes:
    r = subprocess.run(["git", f"--git-dir={snapshot}", *args], input=stdin, capture_output=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"git {' '.join(args[:3])} failed: {r.stderr.decode(errors='replace').strip()}")
    return r.stdout


def list_folder(snapshot: Path, commit: str, folder: str) -> list[dict]:
    """Blobs under ``folder`` at ``commit``: ``[{"path", "blob", "bytes" (or None), "present"}]``."""
    rows = []
    for line in _git(snapshot, "ls-tree", "-r", "-l", "-z", commit, "--", folder).split(b"\0"):
        if not line:
            continue
        meta, path = line.split(b"\t", 1)
        mode, kind, blob, size = meta.split()
        if kind != b"blob":
            continue
        rows.append({"path": path.decode(), "blob": blob.decode(), "bytes": int(size) if size.isdigit() else None})
    check = _git(snapshot, "cat-file", "--batch-check", stdin="".join(r["blob"] + "\n" for r in rows).encode())
    for r, line in zip(rows, check.decode().splitlines()):
        r["present"] = not line.endswith("missing")
    return rows


def extract(source: str, snapshot: Path, dest: Path) -> dict:
    """Extract ``SOURCES[source]`` from ``snapshot`` into ``dest``; returns the manifest (also written)."""
    src = SOURCES[source]
    repo_root = Path(__file__).resolve().parents[1]
    dest = dest.resolve()
    if dest == repo_root or repo_root in dest.parents:
        raise SystemExit(f"refusing to extract into the repository ({dest}); use a folder outside it")
    if not (snapshot / "objects").is_dir() and not (snapshot / "HEAD").is_file():
        raise SystemExit(f"{snapshot} is not a bare git snapshot (fetch github:{src.repository} first)")
    dest.mkdir(parents=True, exist_ok=True)
    files, missing = [], []
    for folder in src.folders:
        rows = list_folder(snapshot, src.commit, folder)
        if not rows:
            raise SystemExit(f"{src.repository}@{src.commit[:12]} has no files under {folder}")
        files += [r for r in rows if r["present"]]
        missing += [r["path"] for r in rows if not r["present"]]
        excl = [f":(exclude){r['path']}" for r in rows if not r["present"]]
        archive = _git(snapshot, "archive", src.commit, "--", folder, *excl)
        t = subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, capture_output=True, check=False)
        if t.returncode != 0:
            raise RuntimeError(f"tar failed: {t.stderr.decode(errors='replace')}")
        log.info("%s: %d files extracted, %d absent from the snapshot", folder, sum(r["present"] for r in rows),
                 sum(not r["present"] for r in rows))
    manifest = {"source": source, "repository": src.repository, "commit": src.commit, "folders": list(src.folders),
                "licence": src.licence, "extracted": len(files), "missing_from_snapshot": missing,
                "files": [{"path": r["path"], "blob": r["blob"], "bytes": r["bytes"]} for r in files]}
    (dest / f"{source}.manifest.json").write_text(json.dumps(manifest, indent=0))
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python tools/get_extra_data.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", choices=sorted(SOURCES), required=True)
    p.add_argument("--snapshot", type=Path, required=True, help="bare git directory that fetch returned")
    p.add_argument("--dest", type=Path, required=True, help="folder outside the repository to extract into")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    m = extract(args.source, args.snapshot, args.dest)
    print(json.dumps({k: v for k, v in m.items() if k != "files"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
