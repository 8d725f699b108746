"""`--backend auto` on a CPU: a short timed trial of each available CPU backend, cached per model and machine.

Which CPU engine is faster depends on the model (fp32 / int8 graph) and the CPU (AVX2, AVX-512,
VNNI, AMX): onnxruntime's int8 kernels are fastest with VNNI, OpenVINO's on some AVX2-only CPUs
(issue 18). A fixed order cannot know, so `choose_cpu_backend` loads each available CPU backend,
runs the model on one input in interleaved rounds for at most `TRIAL_S` seconds in total (loads
included; at least `MIN_RUNS`, at most `MAX_RUNS` timed runs each), keeps the one with the lowest median and closes the
others. The choice is stored in a small JSON file in the user cache folder
(`$USEDGE_CACHE_DIR`, else `$XDG_CACHE_HOME/usedge`, else `~/.cache/usedge`), keyed by the model's
sha256, the machine (CPU model, SIMD flags, cores), the load options that change an engine's speed
(intra-op threads, spinning, onnxruntime's optimisation level) and the engines' versions; an entry this
code did not write (a malformed median) counts as missing. Each engine is checked against the model's
contract (`check`: metadata, weights digest, I/O) before it is timed: one that fails takes no part;
the next load with the same key reads the cache and loads only the winner. `--backend NAME`
bypasses all of this.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from usedge.errors import BackendUnavailable, UsedgeError
from usedge.fileio import write_json_atomic

TRIAL_S = 2.0           # the whole trial, model loads included
MIN_RUNS = 3            # timed runs per backend at least (after one warm-up)
MAX_RUNS = 25           # and at most: enough for a median, short for a fast model
CACHE_FILE = "backend_choice.json"
CACHE_VERSION = 1


def cache_path() -> Path:
    """The trial cache file in the user cache folder."""
    base = os.environ.get("USEDGE_CACHE_DIR")
    if base:
        return Path(base) / CACHE_FILE
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and not os.path.isabs(xdg):      # the XDG spec: a relative path is invalid and ignored
        xdg = None
    return Path(xdg or Path.home() / ".cache") / "usedge" / CACHE_FILE


def read_cache() -> dict:
    """{key: entry}; an unreadable or foreign cache file counts as empty (it is only a cache)."""
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("entries"), dict):
        return {}
    return data["entries"]


MAX_ENTRIES = 64         # the newest trials kept: one per model file and machine, and models come and go


def _write_cache(key: str, entry: dict) -> None:
    entries = read_cache()
    entries.pop(key, None)
    entries[key] = entry            # newest last
    entries = dict(list(entries.items())[-MAX_ENTRIES:])
    try:
        write_json_atomic(cache_path(), {"version": CACHE_VERSION, "entries": entries})
    except (OSError, UsedgeError):
        pass     # a read-only home: the trial simply runs again next time


def trial_key(model_sha256: str, names: list[str], options: dict) -> str:
    """What the trial's outcome depends on: the model, the machine, the engines' versions and every load option
    that changes an engine's speed (threads, spinning, onnxruntime's graph optimisation level)."""
    from usedge.runtime.backends import BACKENDS
    from usedge.runtime.cpu import machine_key

    engines = ", ".join(f"{n}: {BACKENDS[n].available()[1]}" for n in names)
    return (f"{model_sha256} | {machine_key()} | threads {options.get('threads')} | spinning "
            f"{bool(options.get('spinning'))} | opt {options.get('opt_level', 'all')} | {engines}")


def valid_entry(entry, names: list[str]) -> bool:
    """A cache entry this code wrote: a backend of `names` and a finite positive median per backend timed."""
    if not isinstance(entry, dict) or entry.get("backend") not in names:
        return False
    medians = entry.get("medians_ms")
    return (isinstance(medians, dict) and entry["backend"] in medians and all(
        n in names and isinstance(m, (int, float)) and not isinstance(m, bool) and 0 < m < float("inf")
        for n, m in medians.items()))


@dataclass
class Choice:
    """The chosen backend (loaded), why, and the trial's medians (ms) when one ran now or earlier."""

    engine: object
    reason: str
    medians_ms: dict
    checked: object = None          # what the contract check returned for the engine (the model's ModelInfo)


def _trial_input(engine) -> np.ndarray:
    shape = [d if isinstance(d, int) else 1 for d in engine.inputs[0].shape]
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def _summary(medians: dict) -> str:
    return ", ".join(f"{n} {m:.2f} ms" for n, m in sorted(medians.items(), key=lambda kv: kv[1]))


def _load(name: str, path: Path, options: dict):
    """A loaded backend; closed again when loading fails (no half-loaded engine left to the collector)."""
    from usedge.runtime.backends import create_backend

    engine = create_backend(name, **options)
    try:
        return engine.load(path)
    except BaseException:
        engine.close()
        raise


def _checked(engine, check) -> object:
    """`check(engine)` (the model's contract: metadata, weights digest, I/O names and shapes); the engine is
    closed when it fails."""
    try:
        return check(engine)
    except BaseException:
        engine.close()
        raise


def choose_cpu_backend(path: Path, names: list[str], model_sha256: str, options: dict,
                       check: Callable[[object], object] = lambda engine: None) -> Choice:
    """Load the fastest of the CPU backends `names` (each available here) for the model at `path`.

    check: the model's contract, run on each engine as loaded and before any timed run (it raises a
    UsedgeError, e.g. ModelError, when the engine's view of the model breaks it); its result is the Choice's
    `checked`. An engine that fails it takes no part in the trial, so a model that is refused (damaged, or
    declaring a 100000 x 100000 input) is never run, and an engine that renames the outputs never wins."""
    if len(names) == 1:
        engine = _load(names[0], path, options)
        return Choice(engine, f"{names[0]}: the only CPU backend here", {}, _checked(engine, check))
    key = trial_key(model_sha256, names, options)
    cached = read_cache().get(key)
    if valid_entry(cached, names):
        engine = _load(cached["backend"], path, options)
        checked = _checked(engine, check)
        return Choice(engine, f"{cached['backend']}: fastest in a cached trial ({_summary(cached['medians_ms'])}; "
                              f"{cache_path()})", cached["medians_ms"], checked)
    t_end = time.perf_counter() + TRIAL_S
    engines, failed, refusals, checked = {}, [], [], {}
    for name in names:
        try:
            engine = _load(name, path, options)
        except UsedgeError as exc:
            failed.append(f"{name} failed to start ({exc.message})")
            continue
        try:
            checked[name] = _checked(engine, check)
        except UsedgeError as exc:
            refusals.append(exc)
            failed.append(f"{name} cannot run it as a usedge model ({exc.message})")
            continue
        engines[name] = engine
    if not engines and refusals:
        raise refusals[0]           # the model's own problem (damaged, not a usedge export): as one engine says it
    if not engines:
        raise BackendUnavailable(f"no CPU backend could run this model: {'; '.join(failed)}", path=path,
                                 hint="see `usedge doctor`")
    x = _trial_input(next(iter(engines.values())))
    times = {}
    for name, engine in engines.items():
        try:
            engine.infer(x)                                 # warm-up: first-call allocations
            times[name] = []
        except Exception as exc:  # noqa: BLE001 - a model that fails at run time on this engine
            failed.append(f"{name} failed the trial run ({type(exc).__name__})")
    if not times:
        # the model fails at run time on every engine: keep the first, whose errors the caller reports per
        # frame as for any backend; nothing is cached
        first = next(iter(engines))
        for name, engine in engines.items():
            if name != first:
                engine.close()
        return Choice(engines[first], f"{first}: first CPU backend ({'; '.join(failed)})", {}, checked[first])
    while True:                                             # interleaved rounds: load drifts hit all alike
        for name in times:
            # one untimed call first: the engine before it may still be busy-waiting for its next op (onnxruntime's
            # bounded spin, usedge.runtime.threads.SPIN_US; OpenVINO's pool), which would slow this one's first call
            engines[name].infer(x)
            t0 = time.perf_counter()
            engines[name].infer(x)
            times[name].append((time.perf_counter() - t0) * 1e3)
        runs = min(len(v) for v in times.values())
        if (runs >= MIN_RUNS and time.perf_counter() >= t_end) or runs >= MAX_RUNS:
            break
    medians = {n: round(float(np.median(v)), 3) for n, v in times.items()}
    best = min(medians, key=medians.get)
    for name, engine in engines.items():
        if name != best:
            engine.close()
    runs = min(len(v) for v in times.values())
    _write_cache(key, {"backend": best, "medians_ms": medians, "runs": runs, "model_sha256": model_sha256,
                       "when": time.strftime("%Y-%m-%dT%H:%M:%S")})
    reason = f"{best}: fastest in a timed trial ({_summary(medians)}, {runs} runs each)"
    if failed:
        reason += f"; {'; '.join(failed)}"
    return Choice(engines[best], reason, medians, checked[best])
