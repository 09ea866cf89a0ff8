"""The ``saememory`` command.

    saememory explain MEMORY_DIR "Where does my sister live?" --user alice --k 5 --out why.html

``explain`` loads a memory saved with ``SAEMemory.save``, searches it with the word-level
explanation on, and writes the HTML picture of the hits (``saememory.interpret.html``). A Milvus
save on a server needs ``--milvus-uri http://host:19530`` (and ``MILVUS_TOKEN`` in the
environment if the server asks for one): a saved folder does not choose where to connect.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="saememory", description="saememory: an interpretable long-term chat memory.")
    commands = parser.add_subparsers(dest="command", required=True)
    explain = commands.add_parser("explain", help="write an HTML picture of a query's hits in a saved memory")
    explain.add_argument("memory", type=Path, help="a folder written by SAEMemory.save")
    explain.add_argument("query")
    explain.add_argument("--user", default=None, help="whose memory to search; default the default user")
    explain.add_argument("--session", default=None, help="one session only; default all")
    explain.add_argument("--k", type=int, default=5, help="hits; default 5")
    explain.add_argument("--now", default=None, help="the time the query is asked at (ISO 8601); default now")
    explain.add_argument("--out", type=Path, default=Path("saememory-explain.html"),
                         help="the HTML file to write; default saememory-explain.html")
    explain.add_argument("--trust-remote-code", action="store_true",
                         help="let the saved encoder run its model's own code (Nomic models need it); default off")
    explain.add_argument("--milvus-uri", default=None,
                         help="for a Milvus save: where its collection is (a server, or a milvus-lite file that "
                              "moved); a server's token is read from the environment variable MILVUS_TOKEN")
    args = parser.parse_args(argv)

    from saememory import SAEMemory
    from saememory.interpret.html import write_html

    if not args.memory.is_dir():
        parser.error(f"{args.memory} is not a folder; pass the folder SAEMemory.save wrote.")
    # Checked before the model loads: a page that cannot be written should not cost a search first.
    if args.out.is_dir():
        parser.error(f"--out {args.out} is a folder; pass the HTML file to write, e.g. --out {args.out / 'why.html'}.")
    if not args.out.resolve().parent.is_dir():
        parser.error(f"--out {args.out}: the folder {args.out.resolve().parent} does not exist; create it or write "
                     "the page elsewhere.")
    try:
        memory = SAEMemory.load(args.memory, trust_remote_code=args.trust_remote_code, backend=_milvus(args))
        hits = memory.search(args.query, k=args.k, user_id=args.user, session_id=args.session, now=args.now, words=True)
        if not hits and not memory.messages(args.user, args.session):
            # An empty page for a user or session the memory does not hold is a mistake, not an answer.
            users = len(memory.users())
            whose = f"user {args.user!r}" if args.user is not None else "the default user (no --user)"
            parser.error(f"{args.memory} holds no messages of {whose}" + (f" in session {args.session!r}" if args.session
                                                                          else "")
                         + f"; it holds messages of {users} user(s). Pass --user (and --session) of one of them.")
    except (ValueError, TypeError, FileNotFoundError) as err:
        parser.error(str(err))
    try:
        path = write_html(args.out, args.query, hits, sae=getattr(memory.encoder, "sae", None))
    except OSError as err:  # no permission, a full disk
        parser.error(f"--out {args.out}: cannot write the page ({err.strerror or err}).")
    print(f"{len(hits)} hits explained in {path}")
    return 0


def _milvus(args: argparse.Namespace):  # -> MilvusBackend | None
    """The backend ``--milvus-uri`` names, with the saved collection's name (read from the manifest)."""
    if args.milvus_uri is None:
        return None
    import os

    from saememory import MilvusBackend
    from saememory.backends import snapshot

    named = snapshot.read_manifest(args.memory)[1].get("milvus")
    if named is None:
        raise ValueError(f"{args.memory} holds an in-process memory; --milvus-uri is only for a Milvus save.")
    return MilvusBackend(args.milvus_uri, named["collection"], token=os.environ.get("MILVUS_TOKEN") or None)


if __name__ == "__main__":
    sys.exit(main())
