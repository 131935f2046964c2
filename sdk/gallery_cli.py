"""``python -m sdk gallery ...``: the operator's commands for a gallery file (no models are loaded).

Examples::

    python -m sdk gallery list    --gallery people.db            # identities, embeddings, enrolment dates
    python -m sdk gallery remove  --gallery people.db alice bob
    python -m sdk gallery export  --gallery people.db people.jsonl
    python -m sdk gallery import  --gallery new.db people.jsonl   # new.db is created for the export's model
    python -m sdk gallery backup  --gallery people.db people-2024-05-01.db
    python -m sdk gallery restore --gallery people.db people-2024-05-01.db
    python -m sdk gallery check   --gallery people.db            # exit code 1 when a problem is found
    LOOKTHROUGH_GALLERY_KEY=... python -m sdk gallery encrypt --gallery people.db
    python -m sdk gallery index   --gallery people.db hnsw       # approximate search for large galleries
"""
from __future__ import annotations

import argparse
import json
import time
from datetime import datetime

from sdk.ann import INDEX_KINDS, HnswParams


def _open(args: argparse.Namespace, **kwargs):
    """The gallery of ``--gallery`` (must exist), with its recorded model id; ``kwargs`` go to ``Gallery``."""
    from sdk.gallery import Gallery

    return Gallery.open(args.gallery, **kwargs)


def _when(t: float | None) -> str:
    return "" if t is None else datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M")


def cmd_list(args: argparse.Namespace) -> int:
    from sdk.gallery_admin import identities

    with _open(args) as g:
        rows = identities(g)
        facts = {"gallery": str(g.path), "model_id": g.model_id, "dim": g.dim, "identities": len(rows),
                 "embeddings": len(g), "encrypted": g.encrypted, "index": g.index}
    if args.json:
        print(json.dumps({**facts, "people": rows}, indent=2))
        return 0
    print(f"{'name':32s} {'embeddings':>10s}  {'first enrolled':16s}  {'last enrolled':16s}")
    for r in rows:
        print(f"{r['name'][:32]:32s} {r['embeddings']:>10d}  {_when(r['first_enrolled']):16s}  {_when(r['last_enrolled']):16s}")
    print(f"{facts['identities']} identities, {facts['embeddings']} embeddings; model {facts['model_id']}; "
          f"{'encrypted' if facts['encrypted'] else 'not encrypted'}; index {facts['index']}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    missing = 0
    with _open(args) as g:
        for name in args.names:
            n = g.remove(name)
            print(f"removed {n} embeddings of {name!r}" if n else f"{name!r} is not enrolled")
            missing += n == 0
    return 1 if missing and not args.missing_ok else 0


def cmd_export(args: argparse.Namespace) -> int:
    from sdk.gallery_admin import export_rows

    with _open(args) as g:
        n = export_rows(g, args.out, overwrite=args.force)
        enc = g.encrypted
    print(f"exported {n} templates to {args.out} ("
          + ("encrypted: importing needs the same $LOOKTHROUGH_GALLERY_KEY" if enc else
             "NOT encrypted: biometric data, keep it private (mode 0600)") + ")")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from sdk.gallery_admin import import_rows

    r = import_rows(args.file, args.gallery, skip_existing=args.skip_existing)
    print(f"imported {r['rows']} templates of {r['identities']} identities into {args.gallery}"
          + (f" ({r['skipped']} rows of names already enrolled skipped)" if r["skipped"] else ""))
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from sdk.gallery_admin import backup

    t0 = time.perf_counter()
    with _open(args) as g:
        dest = backup(g, args.out, overwrite=args.force)
        n = len(g)
    print(f"backed up {n} embeddings to {dest} in {time.perf_counter() - t0:.2f} s")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from sdk.gallery_admin import restore

    r = restore(args.backup, args.gallery, force=args.force)
    print(f"restored {r['rows']} embeddings (model {r['model_id']}) into {args.gallery}; "
          "running recognizers see them after reopening the gallery")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from sdk.errors import GalleryError
    from sdk.gallery_admin import integrity_check

    try:
        with _open(args) as g:
            problems = integrity_check(g)
            n = len(g)
    except GalleryError as e:  # a file that does not even open is the check's finding, not an error of it
        if "no such file" in str(e) or "is encrypted" in str(e) or "wrong key" in str(e):
            raise
        problems, n = [str(e)], 0
    for p in problems:
        print(f"problem: {p}")
    print(f"{'FAILED' if problems else 'ok'}: {n} embeddings checked ({len(problems)} problems)")
    return 1 if problems else 0


def cmd_encrypt(args: argparse.Namespace) -> int:
    from sdk.crypto import ENV_KEY, key_from_env
    from sdk.errors import GalleryError

    key = key_from_env()
    if key is None:
        raise GalleryError(f"gallery encrypt: set the key in ${ENV_KEY} first")
    with _open(args, key=None) as g:  # opened as a plain gallery, then encrypted
        if g.encrypted:
            raise GalleryError(f"gallery {g.path} is already encrypted")
        g.set_key(key)
        n = len(g)
    print(f"encrypted {n} templates of {args.gallery} with the key in ${ENV_KEY}")
    return 0


def cmd_decrypt(args: argparse.Namespace) -> int:
    with _open(args) as g:
        if not g.encrypted:
            print(f"{args.gallery} is not encrypted")
            return 0
        g.set_key(None)
        n = len(g)
    print(f"decrypted {n} templates of {args.gallery}: they are now stored in plain")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    params = HnswParams(args.m, args.ef_construction, args.ef_search)
    with _open(args) as g:
        t0 = time.perf_counter()
        g.set_index(args.kind, params)
        print(f"{args.gallery}: index {args.kind} (active now: {g.index_active}, {len(g)} embeddings, "
              f"{time.perf_counter() - t0:.1f} s)")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``gallery`` command and its sub-commands to the ``python -m sdk`` parser."""
    base = argparse.ArgumentParser(add_help=False)
    base.add_argument("--gallery", required=True, help="the gallery file (SQLite)")
    base.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    base.add_argument("-q", "--quiet", action="store_true", help="less logging")
    p = sub.add_parser("gallery", help="list / remove / export / import / backup / restore / check a gallery file",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    gsub = p.add_subparsers(dest="gallery_cmd", required=True, metavar="ACTION")
    force = ("--force", {"action": "store_true", "help": "overwrite an existing file"})
    actions = [  # name, help, command, arguments
        ("list", "enrolled identities with counts and dates", cmd_list,
         [("--json", {"action": "store_true", "help": "JSON instead of a table"})]),
        ("remove", "remove identities (all their embeddings)", cmd_remove,
         [("names", {"nargs": "+", "help": "identity names"}),
          ("--missing-ok", {"action": "store_true", "help": "exit 0 even if a name is not enrolled"})]),
        ("export", "write all templates to a JSON-lines file", cmd_export,
         [("out", {"help": "output file (.jsonl), created with mode 0600"}), force]),
        ("import", "add the templates of an export (one transaction)", cmd_import,
         [("file", {"help": "a file written by `gallery export`"}),
          ("--skip-existing", {"action": "store_true", "help": "leave out names the gallery already has"})]),
        ("backup", "consistent copy of the gallery, safe while it is in use", cmd_backup,
         [("out", {"help": "backup file to write (mode 0600)"}), force]),
        ("restore", "replace the gallery by a backup (checked first)", cmd_restore,
         [("backup", {"help": "a file written by `gallery backup`"}),
          ("--force", {"action": "store_true", "help": "replace a gallery of another embedding model"})]),
        ("check", "SQLite integrity check + every template readable", cmd_check, []),
        ("encrypt", "encrypt the stored templates with $LOOKTHROUGH_GALLERY_KEY", cmd_encrypt, []),
        ("decrypt", "store the templates in plain again (needs the key)", cmd_decrypt, []),
        ("index", "search index: exact (default), hnsw or auto (recorded in the file)", cmd_index,
         [("kind", {"choices": INDEX_KINDS}),
          ("--m", {"type": int, "default": HnswParams.m, "help": "HNSW neighbours per node (default %(default)s)"}),
          ("--ef-construction", {"type": int, "default": HnswParams.ef_construction,
                                 "help": "HNSW build candidate list (default %(default)s)"}),
          ("--ef-search", {"type": int, "default": HnswParams.ef_search,
                           "help": "HNSW query candidate list: raise it for galleries near 1M (default %(default)s; "
                                   "see the README's recall table)"})]),
    ]
    for name, help_text, fn, arguments in actions:
        s = gsub.add_parser(name, parents=[base], help=help_text)
        for flag, kwargs in arguments:
            s.add_argument(flag, **kwargs)
        s.set_defaults(fn=fn)
