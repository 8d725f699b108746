"""Bounded loopback load test of `usedge serve`: concurrent POST /v1/predict, requests/s and p99,
and a check that nothing is dropped or mixed up between requests.

    nice -n 10 .venv/bin/python benchmarks/serve_load.py [--model model.onnx] [--requests 240] [--clients 8]

Starts `usedge serve MODEL` as a separate process on 127.0.0.1 (never another address). Then, in
--rounds interleaved rounds (the machine is shared: load drifts, so every ratio compares
neighbours in time):
  direct      in-process Classifier.predict_batch on the same decoded images (no HTTP; baseline)
  sequential  one HTTP client, one request at a time                      (baseline for concurrency)
  concurrent  --clients threads sending their share of --requests
Every answer is checked: HTTP 200, its own X-Request-ID, its own image's size, and probabilities
equal to that image's reference answer (max |dp| <= 1e-6); the images' answers differ pairwise, so a
swapped answer would be caught. Bounded: --deadline-s in all, 30 s per request.
Without --model, a random-init AG-ResNet18 at 224 px with the CAM output is exported first (needs
the export extra; timing does not depend on the weights). The clients share the cores with the server.
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


def start_server(model: Path, threads: int, max_queue: int) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env.pop("USEDGE_TOKEN", None)
    server = subprocess.Popen([sys.executable, "-m", "usedge", "serve", str(model), "--host", "127.0.0.1",
                               "--port", str(port), "--threads", str(threads), "--max-queue", str(max_queue)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while True:
        if server.poll() is not None:
            raise SystemExit(f"server exited: {server.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return server, base
        except httpx.TransportError:
            time.sleep(0.2)
        if time.monotonic() - t0 > 120:
            server.kill()
            raise SystemExit("server did not start in 120 s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--requests", type=int, default=240, help="concurrent requests in all (split over rounds)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--images", type=int, default=12, help="distinct images; each round sends each once "
                                                           "directly and once sequentially")
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (server and direct)")
    ap.add_argument("--deadline-s", type=float, default=300.0)
    ap.add_argument("--out", type=Path, default=RESULTS / "serve_load")
    args = ap.parse_args()
    if not (1 <= args.clients <= 64 and args.clients <= args.requests <= 5000 and 1 <= args.rounds <= 20):
        ap.error("need 1 <= clients <= 64, clients <= requests <= 5000, 1 <= rounds <= 20")

    import httpx

    from usedge.fileio import write_json_atomic, write_text_atomic
    from usedge.runtime.classifier import Classifier
    from usedge.serve.uploads import decode_upload

    tmp = Path(tempfile.mkdtemp(prefix="usedge-serve-load-"))
    model = args.model or export_random_model(tmp)
    images = make_images(tmp / "images", args.images)
    bodies = [p.read_bytes() for p in images]
    clf = Classifier.load(model, backend="ort-cpu", threads=args.threads)
    decoded = [decode_upload(b) for b in bodies]
    for d in decoded[:3]:
        clf.predict_batch([d.frame], regions=d.regions)            # warm-up
    model_sha, describe = clf.model_sha256, clf.describe()

    server, base = start_server(model, args.threads, max_queue=max(64, 2 * args.clients))
    deadline = time.monotonic() + args.deadline_s
    lock = threading.Lock()
    results: list[dict] = []
    rounds: list[dict] = []
    direct_all: list[float] = []
    seq_all: list[float] = []

    def post(client: httpx.Client, i: int, rid: str) -> tuple[int, dict, float]:
        t0 = time.perf_counter()
        r = client.post(f"{base}/v1/predict", content=bodies[i], headers={"X-Request-ID": rid}, timeout=30)
        ms = (time.perf_counter() - t0) * 1e3
        return r.status_code, (r.json() if r.headers.get("content-type", "").startswith("application/json") else {}), ms

    try:
        reference: dict[int, dict] = {}
        with httpx.Client() as c:
            for i in range(len(bodies)):                          # server warm-up + reference answers
                status, d, _ = post(c, i, f"ref-{i}")
                if status != 200:
                    raise SystemExit(f"reference request failed: {status} {d}")
                reference[i] = d
        names = list(reference[0]["probs"])
        ref_p = np.array([[reference[i]["probs"][n] for n in names] for i in range(len(bodies))])
        diffs = [np.abs(ref_p[i] - ref_p[j]).max() for i in range(len(bodies)) for j in range(i + 1, len(bodies))]
        min_pair = float(min(diffs)) if diffs else float("nan")

        def check(d: dict, status: int, i: int, rid: str) -> bool:
            got = np.array([d.get("probs", {}).get(n, np.nan) for n in names], np.float64)
            return (status == 200 and d.get("request_id") == rid and d.get("model_sha256") == model_sha
                    and d.get("input", {}).get("width") == reference[i]["input"]["width"]
                    and d.get("input", {}).get("height") == reference[i]["input"]["height"]
                    and bool(np.isfinite(got).all()) and float(np.abs(got - ref_p[i]).max()) <= 1e-6)

        per_round = [args.requests // args.rounds + (r < args.requests % args.rounds) for r in range(args.rounds)]
        for rnd, n_conc in enumerate(per_round):
            if time.monotonic() > deadline:
                break
            direct_ms = []
            for d in decoded:
                t0 = time.perf_counter()
                clf.predict_batch([d.frame], regions=d.regions)
                direct_ms.append((time.perf_counter() - t0) * 1e3)
            seq_ms, seq_ok = [], 0
            with httpx.Client() as c:
                t0 = time.perf_counter()
                for i in range(len(bodies)):
                    rid = f"r{rnd}-seq-{i}"
                    status, d, ms = post(c, i, rid)
                    seq_ok += check(d, status, i, rid)
                    seq_ms.append(ms)
                seq_wall = time.perf_counter() - t0
            counter = iter(range(n_conc))
            round_results: list[dict] = []

            def worker(wid: int) -> None:
                with httpx.Client() as c:
                    while time.monotonic() < deadline:
                        with lock:
                            k = next(counter, None)
                        if k is None:
                            return
                        i = (k * 7 + wid) % len(bodies)
                        rid = f"r{rnd}-w{wid}-k{k}-i{i}"
                        try:
                            status, d, ms = post(c, i, rid)
                        except httpx.HTTPError as exc:
                            status, d, ms = -1, {"error": type(exc).__name__}, float("nan")
                        with lock:
                            round_results.append({"round": rnd, "status": status, "ok": check(d, status, i, rid), "ms": ms})

            t0 = time.perf_counter()
            with cf.ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(worker, range(args.clients)))
            conc_wall = time.perf_counter() - t0
            results += round_results
            direct_all += direct_ms
            seq_all += seq_ms
            answered = [r for r in round_results if r["status"] == 200]
            rounds.append({
                "round": rnd, "direct_p50_ms": round(float(np.median(direct_ms)), 2),
                "sequential_p50_ms": round(float(np.median(seq_ms)), 2), "sequential_rps": round(len(bodies) / seq_wall, 3),
                "sequential_correct": seq_ok, "concurrent_sent": n_conc, "concurrent_answered": len(answered),
                "concurrent_rps": round(len(answered) / conc_wall, 3),
                "concurrent_p99_ms": round(float(np.percentile([r["ms"] for r in answered], 99)), 2) if answered else None,
            })
            print(f"round {rnd}: {rounds[-1]}", flush=True)
        metrics_text = httpx.get(f"{base}/metrics", timeout=5).text
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        clf.close()

    answered = [r for r in results if r["status"] == 200]
    correct = [r for r in results if r["ok"]]
    statuses: dict[str, int] = {}
    for r in results:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    conc_ms = [r["ms"] for r in answered]
    http_over_direct = [r["sequential_p50_ms"] / r["direct_p50_ms"] for r in rounds]
    conc_over_seq = [r["concurrent_rps"] / r["sequential_rps"] for r in rounds]
    seq_checked = sum(r["sequential_correct"] for r in rounds)
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                    "note": "shared 2-core VM: other engineers' jobs ran concurrently; clients and server share the cores"},
        "model": {"path": str(model) if args.model else "random-init ag_resnet18 224 px (+cam), exported for this run",
                  "sha256": model_sha, "runtime": describe},
        "setup": {"requests": args.requests, "clients": args.clients, "rounds": args.rounds, "images": len(bodies),
                  "image_bytes_mean": int(np.mean([len(b) for b in bodies])), "threads": args.threads,
                  "deadline_s": args.deadline_s, "address": "127.0.0.1"},
        "rounds": rounds,
        "direct_ms": percentiles(direct_all),
        "sequential_ms": percentiles(seq_all),
        "concurrent": {"latency_ms": percentiles(conc_ms) if conc_ms else {}, "sent": args.requests,
                       "finished_in_time": len(results), "answered_200": len(answered), "correct": len(correct),
                       "statuses": statuses,
                       "requests_per_s_median_round": round(float(np.median([r["concurrent_rps"] for r in rounds])), 3)},
        "sequential_requests_per_s_median_round": round(float(np.median([r["sequential_rps"] for r in rounds])), 3),
        "ratios_median_of_rounds": {"sequential_http_p50_over_direct_p50": round(float(np.median(http_over_direct)), 3),
                                    "concurrent_over_sequential_throughput": round(float(np.median(conc_over_seq)), 3)},
        "checks": {"nothing_dropped": len(results) == args.requests and len(answered) == args.requests,
                   "nothing_mixed_up": len(correct) == len(answered) and seq_checked == len(seq_all),
                   "min_pairwise_prob_difference_between_images": min_pair},
        "server_metrics_excerpt": [line for line in metrics_text.splitlines()
                                   if line.startswith(("usedge_http_requests_total", "usedge_errors_total",
                                                       "usedge_predict_latency_seconds_count"))],
    }
    write_json_atomic(args.out.with_suffix(".json"), report)
    c, d_, s_ = report["concurrent"], report["direct_ms"], report["sequential_ms"]
    cl = c["latency_ms"]
    rows = "\n".join(f"| {r['round']} | {r['direct_p50_ms']} | {r['sequential_p50_ms']} | {r['sequential_rps']} | "
                     f"{r['concurrent_rps']} | {r['concurrent_p99_ms']} |" for r in rounds)
    md = f"""# usedge serve: loopback load test

`nice -n 10 .venv/bin/python benchmarks/serve_load.py --requests {args.requests} --clients {args.clients} --rounds {args.rounds}`

Machine: {os.cpu_count()} CPUs, load average at the end {report['machine']['load_average_at_end']}
({report['machine']['note']}). Model: {describe}. {len(bodies)} distinct synthetic B-mode PNGs
(mean {report['setup']['image_bytes_mean']:,} bytes); server and direct baseline with {args.threads}
onnxruntime threads; 127.0.0.1 only.

| mode | requests | requests/s (median round) | p50 ms | p90 ms | p99 ms | max ms |
|---|---:|---:|---:|---:|---:|---:|
| direct `predict_batch`, no HTTP (baseline) | {len(direct_all)} | — | {d_['p50']} | {d_['p90']} | {d_['p99']} | {d_['max']} |
| HTTP, 1 client, sequential | {len(seq_all)} | {report['sequential_requests_per_s_median_round']} | {s_['p50']} | {s_['p90']} | {s_['p99']} | {s_['max']} |
| HTTP, {args.clients} clients, concurrent | {len(answered)} | {c['requests_per_s_median_round']} | {cl.get('p50')} | {cl.get('p90')} | {cl.get('p99')} | {cl.get('max')} |

Ratios (median over rounds, each round's modes back to back): sequential HTTP p50 / direct p50
**{report['ratios_median_of_rounds']['sequential_http_p50_over_direct_p50']}**; concurrent / sequential
throughput **{report['ratios_median_of_rounds']['concurrent_over_sequential_throughput']}**.

| round | direct p50 ms | sequential p50 ms | sequential req/s | concurrent req/s | concurrent p99 ms |
|---:|---:|---:|---:|---:|---:|
{rows}

Checks: concurrent sent {c['sent']}, finished in time {c['finished_in_time']}, answered 200 {c['answered_200']},
correct {c['correct']} (own request id, own image size, probabilities equal to that image's reference
within 1e-6); statuses {c['statuses']}; sequential answers correct {seq_checked}/{len(seq_all)}.
Smallest difference between two images' answers {min_pair:.2e}, so a swapped answer would fail.
Nothing dropped: **{report['checks']['nothing_dropped']}**; nothing mixed up: **{report['checks']['nothing_mixed_up']}**.
"""
    write_text_atomic(args.out.with_suffix(".md"), md)
    print(md)
    return 0 if report["checks"]["nothing_dropped"] and report["checks"]["nothing_mixed_up"] else 1


if __name__ == "__main__":
    sys.exit(main())
