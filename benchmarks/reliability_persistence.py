"""Reliability of save and load under concurrency and kills: savers and loaders in separate processes.

    nice -n 10 python benchmarks/reliability_persistence.py --rounds 40 --seconds 4

Each round starts on a new folder with ``--savers`` processes that save random memories to it in
a loop and ``--loaders`` processes that load it in a loop and check what they got. Every 0.05 to
0.5 s the parent SIGKILLs a random saver that has completed a save (one kill in five hits a
loader that has tried a load) and starts another in its place. At the end of the round every
process is killed; the folder must then load as one complete saved state, and a last save must
leave exactly one snapshot and no ``.tmp-`` folder. Prints the counts as a markdown table, then
any failures.

A failure is: a load raising anything but FileNotFoundError, or FileNotFoundError once a save
has completed; a load returning anything but exactly the state one saver began to save (its
records, and its vectors and codes as the backend stores them (int8), rebuilt from the token in
the manifest); a round whose folder does not load so; leftovers after a clean save. The
memories are small and synthetic (dimension 8, 16 SAE features, up to 60 messages over two
users sharing message ids), written through ``FaissBackend`` directly, so the child processes
never import torch.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DIM, D_SAE, MAX_MESSAGES = 8, 16, 60
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november".split()


def new_index() -> Any:
    """An empty, open ``FaissBackend`` of this benchmark's widths (``saememory``'s top level loads no torch)."""
    from saememory.backends.faiss import FaissBackend

    index = FaissBackend()
    index.open(DIM, D_SAE)
    return index


def load_index(folder: Any) -> tuple[Any, dict[str, Any]]:
    from saememory.backends.faiss import FaissBackend

    return FaissBackend.load(folder)


def state(token: int) -> tuple[list[dict[str, Any]], Any, Any]:
    """The records, dense vectors and SAE codes of the memory saved under ``token``."""
    import numpy as np
    import scipy.sparse as sp

    rng = np.random.default_rng(token)
    n = int(rng.integers(0, MAX_MESSAGES + 1))
    records = [{"id": f"m{i // 2}", "content": " ".join(rng.choice(WORDS, 5)), "role": "user",
                "session_id": f"s{i % 3}", "timestamp": None, "user_id": f"u{i % 2}", "metadata": {"i": i}}
               for i in range(n)]  # the two users share message ids
    dense = rng.standard_normal((n, DIM)).astype(np.float32)
    sparse = sp.random(n, D_SAE, density=0.25, format="csr", dtype=np.float32, random_state=rng)
    return records, dense, sparse


def mismatch(index: Any, token: int) -> str | None:
    """Why a loaded ``FaissBackend`` is not exactly the state saved under ``token``, or None."""
    import numpy as np

    records, dense, sparse = state(token)
    if index._records != records:  # the private views: the whole state, row by row
        return f"records differ from token {token}'s"
    held = new_index()  # what the backend stores for this state (int8 vectors and codes), as a saver held it
    if records:
        held.add(records, dense, sparse)
    if not np.array_equal(index._dense.values, held._dense.values) or not np.array_equal(index._dense.scale,
                                                                                         held._dense.scale):
        return f"dense vectors differ from token {token}'s"
    if any(not np.array_equal(a, b) for a, b in zip(index._sparse.parts(np.arange(len(records))),
                                                    held._sparse.parts(np.arange(len(records))))):
        return f"SAE codes differ from token {token}'s"
    return None


def _log(handle: int, *words: object) -> None:
    os.write(handle, (" ".join(map(str, words)) + "\n").encode())  # one write: whole lines survive a kill


def saver(folder: Path, log: int) -> None:
    """Saves a new random memory to ``folder``, again and again."""
    while True:
        token = random.SystemRandom().getrandbits(62)
        records, dense, sparse = state(token)
        index = new_index()
        if records:
            index.add(records, dense, sparse)
        _log(log, "begin", token, time.time())
        index.save(folder, {"encoder": {}, "settings": {}, "token": token}, overwrite=True)  # replacing is the point
        _log(log, "done", token, time.time())


def loader(folder: Path, log: int) -> None:
    """Loads ``folder`` again and again, and checks each load against the state its token names."""
    loaded_once = False
    while True:
        started = time.time()
        try:
            index, manifest = load_index(folder)
        except FileNotFoundError as err:
            if loaded_once:
                _log(log, "fail", f"FileNotFoundError after a successful load: {err}")
            else:
                _log(log, "nosave", started)
        except Exception as err:  # anything else is a failure, recorded with its message
            _log(log, "fail", f"{type(err).__name__}: {err}".replace("\n", " "))
        else:
            loaded_once = True
            problem = mismatch(index, manifest["token"])
            if problem:
                _log(log, "fail", problem)
            else:
                _log(log, "ok", manifest["token"])
        time.sleep(random.uniform(0, 0.01))


@dataclass
class Counts:
    """What the rounds did, summed; ``failures`` says what went wrong, one line each."""

    rounds: int = 0
    seconds: float = 0.0
    saves: int = 0
    loads: int = 0
    loads_before_first_save: int = 0
    kills_savers: int = 0
    kills_mid_save: int = 0
    kills_loaders: int = 0
    failures: list[str] = field(default_factory=list)


def _start(role: str, folder: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", role, "--folder", str(folder),
               "--log", str(log)]
    with open(log.with_suffix(".err"), "wb") as stderr:  # a file, not a pipe: a chatty child never blocks
        return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)


def _kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait()


def _worked(log: str) -> bool:
    """Whether a worker's log shows a completed save or load."""
    return any(line.split(" ", 1)[0] in ("done", "ok", "nosave") for line in log.splitlines())


def run_round(folder: Path, logs: Path, seconds: float, savers: int, loaders: int, rng: random.Random,
              counts: Counts) -> None:
    """One round on a new ``folder``: workers, random kills, then the checks on what is left."""
    processes: dict[subprocess.Popen, tuple[str, Path]] = {}

    def start(role: str) -> None:
        log = logs / f"{role}-{len(list(logs.glob('*.log')))}.log"
        log.touch()
        processes[_start(role, folder, log)] = (role, log)

    for role in ["saver"] * savers + ["loader"] * loaders:
        start(role)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(rng.uniform(0.05, 0.5))
        role = "loader" if loaders and rng.random() < 0.2 else "saver"
        # Only workers that have done their work once: under load a kill must not always beat the first save.
        working = [p for p, (r, log) in processes.items() if r == role and _worked(log.read_text())]
        if not working:
            continue
        victim = rng.choice(working)
        if victim.poll() is not None:
            break  # it died by itself: reported below
        _kill(victim)
        lines = processes.pop(victim)[1].read_text().splitlines()
        counts.kills_loaders += role == "loader"
        counts.kills_savers += role == "saver"
        counts.kills_mid_save += role == "saver" and bool(lines) and lines[-1].startswith("begin")
        start(role)
    for process, (role, log) in processes.items():
        if process.poll() is not None:  # a worker that died by itself: its stderr says why
            counts.failures.append(f"a {role} exited by itself: {log.with_suffix('.err').read_text()[-500:]}")
        _kill(process)
    _check_round(folder, logs, counts)


def _check_round(folder: Path, logs: Path, counts: Counts) -> None:
    begun, done_times, nosave_times = set(), [], []
    for log in logs.glob("*.log"):
        for line in log.read_text().splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "begin":
                begun.add(int(rest.split()[0]))
            elif kind == "done":
                done_times.append(float(rest.split()[1]))
            elif kind == "nosave":
                nosave_times.append(float(rest))
            elif kind == "ok":
                counts.loads += 1
            elif kind == "fail":
                counts.failures.append(f"load: {rest}")
    counts.saves += len(done_times)
    counts.loads_before_first_save += len(nosave_times)
    first_save = min(done_times, default=float("inf"))
    late = [t for t in nosave_times if t >= first_save]
    if late:
        counts.failures.append(f"{len(late)} loads found no save after the first save had completed")
    try:
        index, manifest = load_index(folder)
    except FileNotFoundError:
        if done_times:
            counts.failures.append("the round's folder holds no save although saves completed")
        return
    except Exception as err:
        counts.failures.append(f"the round's folder does not load: {type(err).__name__}: {err}")
        return
    problem = mismatch(index, manifest["token"]) if manifest["token"] in begun else "an unknown token"
    if problem:
        counts.failures.append(f"the round's folder loads a state no saver began: {problem}")
    index.save(folder, {"encoder": {}, "settings": {}, "token": manifest["token"]}, overwrite=True)  # cleans up, under the lock
    left = sorted(p.name for p in folder.iterdir() if p.name.startswith(("snapshot-", ".tmp-")))
    if len(left) != 1 or not left[0].startswith("snapshot-"):
        counts.failures.append(f"a clean save left {left}")


def run(rounds: int, seconds: float, savers: int, loaders: int, seed: int, workdir: Path) -> Counts:
    """``rounds`` rounds of ``seconds`` each, in folders under ``workdir``."""
    rng, counts, start = random.Random(seed), Counts(), time.monotonic()
    for number in range(rounds):
        logs = workdir / f"round-{number}-logs"
        logs.mkdir()
        run_round(workdir / f"round-{number}", logs, seconds, savers, loaders, rng, counts)
        counts.rounds += 1
    counts.seconds = time.monotonic() - start
    return counts


def table(counts: Counts, savers: int, loaders: int) -> str:
    """The counts as a markdown table."""
    header = ["rounds", "wall time", "savers + loaders", "saves", "loads", "loads before the first save",
              "kills of savers (mid-save)", "kills of loaders", "failures"]
    row = [counts.rounds, f"{counts.seconds:.0f} s", f"{savers} + {loaders}", counts.saves, counts.loads,
           counts.loads_before_first_save, f"{counts.kills_savers} ({counts.kills_mid_save})", counts.kills_loaders,
           len(counts.failures)]
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      "| " + " | ".join(map(str, row)) + " |"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of a round")
    parser.add_argument("--savers", type=int, default=2)
    parser.add_argument("--loaders", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=["saver", "loader"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--log", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        handle = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        (saver if args.worker == "saver" else loader)(args.folder, handle)
        return
    with tempfile.TemporaryDirectory() as workdir:
        counts = run(args.rounds, args.seconds, args.savers, args.loaders, args.seed, Path(workdir))
    print(table(counts, args.savers, args.loaders))
    for failure in counts.failures[:20]:
        print(f"- {failure}")
    sys.exit(1 if counts.failures else 0)


if __name__ == "__main__":
    main()
