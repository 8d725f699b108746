"""Bounded loopback load test of `usedge serve`: concurrent POST /v1/predict, requests/s and p99,
and a check that nothing is dropped or mixed up between requests.

    nice -n 10 .venv/bin/python benchmarks/serve_load.py [--model model.onnx] [--requests 240] [--clients 8]

Starts `usedge serve MODEL` as a separate process on 127.0.0.1 (never another address), then:
  direct      in-process Classifier.predict_batch on the same decoded images (the baseline: no HTTP)
  sequential  one client, one request at a time
  concurrent  --clients threads, --requests in total, each image sent many times, every request
              tagged with X-Request-ID
Every answer is checked: HTTP 200, its request id, its input size and its probabilities equal the
sequential answer for that image (max |dp| <= 1e-6). The images' answers differ pairwise, so a
swapped answer would be caught. Bounded: --deadline-s seconds at most, 30 s per request.
Without --model, a random-init AG-ResNet18 at 224 px with the CAM output is exported first (needs
the export extra; timing does not depend on the weights). Timings are ratios to the baselines of
the same run; the clients share the machine's cores with the server.
Writes benchmarks/results/serve_load.json and .md.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def export_random_model(out: Path, size: int = 224) -> Path:
    import torch

    from usedge import CLASS_NAMES
    from usedge.export.onnx_export import export_onnx
    from usedge.runtime.model_info import ModelInfo
    from usedge.runtime.preprocess import PreprocessSpec
    from usedge.train.model import build_model

    torch.manual_seed(0)
    model = build_model("ag_resnet18", num_classes=len(CLASS_NAMES)).eval()
    info = ModelInfo(class_names=list(CLASS_NAMES), input_size=size, preprocess=PreprocessSpec(size=size),
                     training={"note": "random init, for the serve load test"})
    return export_onnx(model, out / "model.onnx", info, with_cam=True)


def make_images(out: Path, count: int) -> list[Path]:
    from usedge.synth.cohort import make_cohort

    make_cohort(out, seed=7, patients=(2, 2, 2), images=max(6, count), progress=False)
    return sorted(out.glob("*/*.png"))[:count]


def percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms, np.float64)
    return {"p50": round(float(np.percentile(a, 50)), 2), "p90": round(float(np.percentile(a, 90)), 2),
            "p99": round(float(np.percentile(a, 99)), 2), "max": round(float(a.max()), 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--requests", type=int, default=240)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--sequential", type=int, default=48)
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2, help="server's onnxruntime intra-op threads")
    ap.add_argument("--deadline-s", type=float, default=240.0)
    ap.add_argument("--out", type=Path, default=RESULTS / "serve_load")
    args = ap.parse_args()
    if args.clients < 1 or args.requests < args.clients or args.requests > 5000:
        ap.error("need 1 <= clients <= requests <= 5000")

    import httpx

    from usedge.fileio import write_json_atomic, write_text_atomic
    from usedge.runtime.classifier import Classifier
    from usedge.serve.uploads import decode_upload

    tmp = Path(tempfile.mkdtemp(prefix="usedge-serve-load-"))
    model = args.model or export_random_model(tmp)
    images = make_images(tmp / "images", args.images)
    bodies = [p.read_bytes() for p in images]

    # -- baseline 0: the same work without HTTP ----------------------------------------------------
    clf = Classifier.load(model, backend="ort-cpu", threads=args.threads)
    frames = [decode_upload(b).frame for b in bodies]
    for f in frames[:3]:
        clf.predict_batch([f])
    direct_ms = []
    for _ in range(3):
        for f in frames:
            t0 = time.perf_counter()
            clf.predict_batch([f])
            direct_ms.append((time.perf_counter() - t0) * 1e3)
    model_sha = clf.model_sha256
    describe = clf.describe()
    clf.close()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    env.pop("USEDGE_TOKEN", None)
    server = subprocess.Popen([sys.executable, "-m", "usedge", "serve", str(model), "--host", "127.0.0.1",
                               "--port", str(port), "--threads", str(args.threads),
                               "--max-queue", str(max(64, args.clients * 2))],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t_start = time.monotonic()
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit(f"server exited: {server.stderr.read()[-2000:]}")
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
            if time.monotonic() - t_start > 120:
                raise SystemExit("server did not start in 120 s")

        def post(client: httpx.Client, i: int, rid: str) -> tuple[int, dict, float]:
            t0 = time.perf_counter()
            r = client.post(f"{base}/v1/predict", content=bodies[i], headers={"X-Request-ID": rid}, timeout=30)
            ms = (time.perf_counter() - t0) * 1e3
            return r.status_code, (r.json() if r.headers.get("content-type", "").startswith("application/json") else {}), ms

        # -- baseline 1: one client, sequential; also the reference answer per image -----------------
        reference: dict[int, dict] = {}
        seq_ms = []
        with httpx.Client() as c:
            for i in range(len(bodies)):                        # warm-up + references
                status, d, _ = post(c, i, f"ref-{i}")
                assert status == 200, d
                reference[i] = d
            t0 = time.perf_counter()
            for k in range(args.sequential):
                status, d, ms = post(c, k % len(bodies), f"seq-{k}")
                assert status == 200, d
                seq_ms.append(ms)
            seq_wall = time.perf_counter() - t0
        names = list(reference[0]["probabilities"])
        ref_p = np.array([[reference[i]["probabilities"][n] for n in names] for i in range(len(bodies))])
        diffs = [np.abs(ref_p[i] - ref_p[j]).max() for i in range(len(bodies)) for j in range(i + 1, len(bodies))]
        min_pair = float(min(diffs)) if diffs else float("nan")

        # -- concurrent ----------------------------------------------------------------------------
        stop_at = time.monotonic() + args.deadline_s
        results: list[dict] = []
        lock = threading.Lock()
        counter = iter(range(args.requests))

        def worker(wid: int) -> None:
            with httpx.Client() as c:
                while time.monotonic() < stop_at:
                    with lock:
                        k = next(counter, None)
                    if k is None:
                        return
                    i = (k * 7 + wid) % len(bodies)
                    rid = f"w{wid}-k{k}-i{i}"
                    try:
                        status, d, ms = post(c, i, rid)
                    except httpx.HTTPError as exc:
                        status, d, ms = -1, {"error": type(exc).__name__}, float("nan")
                    got = np.array([d.get("probabilities", {}).get(n, np.nan) for n in names])
                    ok = (status == 200 and d.get("request_id") == rid
                          and d.get("input", {}).get("width") == reference[i]["input"]["width"]
                          and d.get("input", {}).get("height") == reference[i]["input"]["height"]
                          and d.get("model_sha256") == model_sha
                          and float(np.nanmax(np.abs(got - ref_p[i])) if np.isfinite(got).all() else np.inf) <= 1e-6)
                    with lock:
                        results.append({"k": k, "status": status, "ok": bool(ok), "ms": ms})

        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(worker, range(args.clients)))
        conc_wall = time.perf_counter() - t0
        metrics_text = httpx.get(f"{base}/metrics", timeout=5).text
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()

    answered = [r for r in results if r["status"] == 200]
    correct = [r for r in results if r["ok"]]
    conc_ms = [r["ms"] for r in answered]
    statuses: dict[str, int] = {}
    for r in results:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    direct = percentiles(direct_ms)
    seq = percentiles(seq_ms)
    conc = percentiles(conc_ms) if conc_ms else {}
    seq_rps = args.sequential / seq_wall
    conc_rps = len(answered) / conc_wall
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "note": "shared 2-core VM: other engineers' jobs ran concurrently; clients and server share the cores"},
        "model": {"path": str(model) if args.model else "random-init ag_resnet18 224 px (+cam), exported for this run",
                  "sha256": model_sha, "runtime": describe},
        "setup": {"requests": args.requests, "clients": args.clients, "sequential": args.sequential,
                  "images": len(bodies), "image_bytes_mean": int(np.mean([len(b) for b in bodies])),
                  "server_threads": args.threads, "deadline_s": args.deadline_s, "address": "127.0.0.1"},
        "direct_ms": direct,
        "sequential": {"requests_per_s": round(seq_rps, 2), "latency_ms": seq},
        "concurrent": {"requests_per_s": round(conc_rps, 2), "latency_ms": conc, "sent": args.requests,
                       "finished_in_time": len(results), "answered_200": len(answered), "correct": len(correct),
                       "statuses": statuses, "wall_s": round(conc_wall, 2)},
        "ratios": {"concurrent_vs_sequential_throughput": round(conc_rps / seq_rps, 3),
                   "sequential_p50_vs_direct_p50": round(seq["p50"] / direct["p50"], 3),
                   "direct_rate_per_s": round(1000.0 / direct["p50"], 2)},
        "checks": {"nothing_dropped": len(results) == args.requests and len(answered) == args.requests,
                   "nothing_mixed_up": len(correct) == len(answered),
                   "min_pairwise_prob_difference_between_images": min_pair},
        "server_metrics_excerpt": [line for line in metrics_text.splitlines()
                                   if line.startswith(("usedge_http_requests_total", "usedge_errors_total",
                                                       "usedge_predict_latency_seconds_count",
                                                       "usedge_predict_latency_seconds_sum"))],
    }
    write_json_atomic(args.out.with_suffix(".json"), report)
    c = report["concurrent"]
    md = f"""# usedge serve: loopback load test

`nice -n 10 .venv/bin/python benchmarks/serve_load.py --requests {args.requests} --clients {args.clients}`

Machine: {os.cpu_count()} CPUs ({report['machine']['note']}). Model: {report['model']['runtime']}.
{len(bodies)} distinct synthetic B-mode PNGs (mean {report['setup']['image_bytes_mean']:,} bytes), server with
{args.threads} onnxruntime threads, clients in the same machine, 127.0.0.1 only.

| mode | requests | requests/s | p50 ms | p90 ms | p99 ms | max ms |
|---|---:|---:|---:|---:|---:|---:|
| direct `predict_batch` (no HTTP, baseline) | {len(direct_ms)} | {1000 / direct['p50']:.1f} (1/p50) | {direct['p50']} | {direct['p90']} | {direct['p99']} | {direct['max']} |
| HTTP, 1 client, sequential | {args.sequential} | {seq_rps:.1f} | {seq['p50']} | {seq['p90']} | {seq['p99']} | {seq['max']} |
| HTTP, {args.clients} clients, concurrent | {len(answered)} | {conc_rps:.1f} | {conc.get('p50')} | {conc.get('p90')} | {conc.get('p99')} | {conc.get('max')} |

Ratios: concurrent / sequential throughput {report['ratios']['concurrent_vs_sequential_throughput']};
sequential HTTP p50 / direct p50 {report['ratios']['sequential_p50_vs_direct_p50']}.

Checks: sent {c['sent']}, finished in time {c['finished_in_time']}, answered 200 {c['answered_200']},
correct (own request id, own image size, probabilities equal to that image's reference within 1e-6)
{c['correct']}; statuses {c['statuses']}. Smallest difference between two images' answers:
{min_pair:.2e} (so a swapped answer would fail the check). Nothing dropped: {report['checks']['nothing_dropped']};
nothing mixed up: {report['checks']['nothing_mixed_up']}.
"""
    write_text_atomic(args.out.with_suffix(".md"), md)
    print(md)
    return 0 if report["checks"]["nothing_dropped"] and report["checks"]["nothing_mixed_up"] else 1


if __name__ == "__main__":
    sys.exit(main())
