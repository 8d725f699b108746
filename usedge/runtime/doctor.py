"""`usedge doctor`: what is installed, which backends, providers and video/DICOM decoders work here, and why not.

Only asks; never imports torch (its presence is read from package metadata). With a MODEL it loads
that one model (as `usedge infer` would) to say whether it runs and show its model card's provenance.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import os
import platform
import re
import sys
from dataclasses import asdict, dataclass

PACKAGES = [  # (distribution names to try, what it is for, the module to import)
    (("numpy",), "arrays (base)", "numpy"),
    (("opencv-python-headless", "opencv-python", "opencv-contrib-python"), "images, video, capture (base)", "cv2"),
    (("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"), "ONNX inference (base)", "onnxruntime"),
    (("pydicom",), "DICOM (base)", "pydicom"),
    (("typer",), "command line (base)", "typer"),
    (("rich",), "progress and tables (base)", "rich"),
    (("av",), "H.264 video for --record and the demo (base)", "av"),
    (("tensorrt", "tensorrt-cu12", "tensorrt-cu13"), "native TensorRT (gpu)", "tensorrt"),
    (("onnxruntime-ep-nv-tensorrt-rtx-cu13", "onnxruntime-ep-nv-tensorrt-rtx-cu12"),
     "TensorRT for RTX plugin for the plain onnxruntime (rtx)", None),
    (("cuda-python", "cuda-bindings"), "CUDA buffers/streams for TensorRT (gpu)", None),
    (("openvino",), "OpenVINO CPU backend (openvino)", "openvino"),
    (("torch",), "training/export only: never imported by the runtime", "torch"),
]


def import_failures(modules: list[str]) -> dict[str, str]:
    """{module: why} for the modules that do not import, tried in a child process (a broken or shadowed
    install is found without loading torch into this one)."""
    import subprocess

    code = ("import importlib, sys\nfor m in sys.argv[1:]:\n    try:\n        importlib.import_module(m)\n"
            "    except Exception as e:\n        print(m + '\\t' + (type(e).__name__ + ': ' + str(e)).splitlines()[0][:160])\n")
    try:
        res = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(line.split("\t", 1) for line in res.stdout.splitlines() if "\t" in line)


@dataclass
class Check:
    section: str
    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


def _version(names: tuple[str, ...]) -> list[str]:
    found = []
    for n in names:
        try:
            found.append(f"{n} {md.version(n)}")
        except md.PackageNotFoundError:
            continue
    return found


def cpu_checks() -> list[Check]:
    """The CPU's model and SIMD flags, and what they mean for INT8 models (see usedge.export.int8)."""
    from usedge.runtime.cpu import cpu_model, int8_kernels, usable_cores

    name, flags = cpu_model()
    cores = usable_cores()
    out = [Check("system", "cpu", True, f"{name}; {cores} usable core{'' if cores == 1 else 's'}; flags: {', '.join(flags) or 'none listed'}")]
    if platform.machine().lower() not in ("x86_64", "amd64") or not flags:
        return out              # the saturation below is an x86-64 matter; no flags: /proc/cpuinfo unreadable
    kernels = int8_kernels(flags)
    if kernels == "vnni":
        why = "VNNI: onnxruntime's int8 kernels sum in int32, exact for any INT8 file"
    elif kernels == "avx2":
        why = ("AVX2 without VNNI: onnxruntime's int8 kernels add u8 x s8 pairs in saturating int16 (VPMADDUBSW); "
               "usedge's INT8 exports keep weights within 7 bits, exact here; an INT8 file with full 8-bit weights "
               "can saturate")
    else:
        why = "no AVX2: onnxruntime's int8 runs its older SSE kernels (slower); usedge's 7-bit INT8 weights are exact there too"
    return out + [Check("system", "int8 kernels", True, why)]


def package_checks() -> list[Check]:
    """Each package: installed (its version) and, when installed, importable (checked in a child process)."""
    found = {names: _version(names) for names, _, _ in PACKAGES}
    failed = import_failures([m for names, _, m in PACKAGES if m and found[names] and m not in sys.modules])
    out = []
    for names, why, module in PACKAGES:
        if module in failed:
            out.append(Check("packages", names[0], False, f"{', '.join(found[names])} installed but does not import "
                             f"({failed[module]}) — {why}; reinstall it"))
        else:
            out.append(Check("packages", names[0], bool(found[names]),
                             f"{', '.join(found[names]) or 'not installed'} — {why}"))
    return out


def backend_checks() -> list[Check]:
    from usedge.runtime.backends import availability

    return [Check("backends", name, ok, why) for name, (ok, why) in availability().items()]


SHOW_TRIALS = 8      # the newest cached backend trials doctor lists


def trial_checks() -> list[Check]:
    """`--backend auto`'s cached CPU trials for this machine (backends/trial.py): which model ran fastest where."""
    from usedge.runtime.backends import CPU_BACKENDS
    from usedge.runtime.backends.trial import valid_entry, cache_path, read_cache
    from usedge.runtime.cpu import machine_key

    here = machine_key()
    cache = read_cache()
    # an entry this code did not write (a malformed median) is not shown: the next load measures afresh
    mine = [(k, e) for k, e in cache.items() if f" | {here} | " in k]
    entries = [(k, e) for k, e in mine if valid_entry(e, list(CPU_BACKENDS))]
    damaged = ([Check("auto backend", "CPU trial cache", True, f"{len(mine) - len(entries)} cached trial(s) for this "
                      f"machine are malformed: measured again at the next load ({cache_path()})")]
               if len(entries) < len(mine) else [])
    if not entries:
        unreadable = not cache and cache_path().is_file() and cache_path().stat().st_size > 0
        return damaged or [Check("auto backend", "CPU trial cache", True,
                                 f"the cache file cannot be read (damaged, or from another usedge): the next trial "
                                 f"replaces it ({cache_path()})" if unreadable
                                 else f"no trial on this machine yet ({cache_path()})")]
    shown = entries[-SHOW_TRIALS:]      # the newest (the cache keeps its entries newest last)
    checks = [Check("auto backend", f"model {e.get('model_sha256', '?')[:12]}", True,
                    f"{e['backend']} ({', '.join(f'{n} {m:.2f} ms' for n, m in e['medians_ms'].items())}; "
                    f"{_load_options(k)}{e.get('when', '')})")
              for k, e in shown]
    if len(entries) > len(shown):
        checks.insert(0, Check("auto backend", "CPU trial cache", True,
                               f"{len(entries)} trials on this machine, the newest {len(shown)} below ({cache_path()})"))
    return damaged + checks


def _load_options(key: str) -> str:
    """The load options a trial was keyed by (backends.trial.trial_key), as `threads 2, spinning True, opt all; `:
    two trials of one model with other options are told apart."""
    found = re.search(r"threads (\S+) \| spinning (\S+) \| opt (\S+)", key)
    return f"threads {found[1]}, spinning {found[2]}, opt {found[3]}; " if found else ""


def provider_checks() -> list[Check]:
    try:
        import onnxruntime as ort
    except ImportError:
        return [Check("onnxruntime", "providers", False, "onnxruntime is not installed")]
    providers = ort.get_available_providers()
    return [Check("onnxruntime", "providers", True, ", ".join(providers)),
            Check("onnxruntime", "device", True, ort.get_device())]


def gpu_checks() -> list[Check]:
    from usedge.runtime.backends.ort import cuda_driver_present

    ok, why = cuda_driver_present()
    out = [Check("gpu", "driver", ok, why)]
    if ok:
        try:
            from usedge.runtime.engine_sidecar import local_target

            name, cc, trt = local_target()
            out.append(Check("gpu", "device 0", True, f"{name}, sm_{cc.replace('.', '')}, TensorRT {trt}"))
        except Exception as exc:  # missing TensorRT/cuda-python: say so, keep going
            out.append(Check("gpu", "device 0", False, getattr(exc, "message", str(exc))))
    return out


def video_checks() -> list[Check]:
    import cv2

    from usedge.runtime.sinks import display_available

    out = [Check("opencv", "version", True, cv2.__version__)]
    try:
        reg = cv2.videoio_registry
        cams = [reg.getBackendName(b) for b in reg.getCameraBackends()]
        streams = [reg.getBackendName(b) for b in reg.getStreamBackends()]
        out.append(Check("opencv", "capture backends", bool(cams), ", ".join(cams) or "none (no camera capture)"))
        out.append(Check("opencv", "file/URL backends", bool(streams), ", ".join(streams) or "none"))
        out.append(Check("opencv", "GStreamer", "GSTREAMER" in streams + cams,
                         "available" if "GSTREAMER" in streams + cams else "not built in (pipelines need an OpenCV with GStreamer)"))
    except Exception as exc:  # very old OpenCV without videoio_registry
        out.append(Check("opencv", "video backends", False, str(exc)))
    ok, why = display_available()
    out.append(Check("opencv", "--show window", ok, why))
    return out


def dicom_checks() -> list[Check]:
    """One row per decoder, each under its own name (the module pydicom imports) and its package's version."""
    out = []
    for mod, dist, what in (("pylibjpeg", "pylibjpeg", "JPEG/JPEG-LS/JPEG 2000 via pylibjpeg plugins"),
                            ("openjpeg", "pylibjpeg-openjpeg", "JPEG 2000"), ("libjpeg", "pylibjpeg-libjpeg", "JPEG"),
                            ("gdcm", "python-gdcm", "most compressed syntaxes"),
                            ("PIL", "pillow", "JPEG baseline / JPEG 2000")):
        ok = importlib.util.find_spec(mod) is not None
        found = _version((dist,))
        detail = f"{found[0] if found else dist} — {what}" if ok else f"not installed — {what} (pip install {dist})"
        out.append(Check("dicom decoders", mod, ok, detail))
    return out


def model_checks(path) -> list[Check]:
    """Whether MODEL loads here (backend chosen as `usedge infer` would) and its model card's provenance line."""
    from pathlib import Path

    from usedge.errors import UsedgeError
    from usedge.runtime.classifier import Classifier
    from usedge.runtime.model_info import model_card_line

    name = Path(path).name
    try:
        clf = Classifier.load(path)
    except UsedgeError as exc:
        return [Check("model", name, False, exc.one_line())]
    try:
        sp = clf.spec       # what `usedge crop` needs to give this model's inputs (--crop, --resize, ...)
        how = (f"{sp.size} px, crop {sp.crop}, resize {sp.resize}, Doppler "
               f"{'removed' if sp.remove_doppler else 'kept'}, (x/255 - {sp.mean:g}) / {sp.std:g}")
        return [Check("model", name, True, f"{clf.describe()}; classes {', '.join(clf.class_names)}"),
                Check("model", "preprocessing", True, how),
                Check("model", "model card", bool(clf.info.model_card), model_card_line(clf.info))]
    finally:
        clf.close()


def run_checks(model=None) -> list[Check]:
    """Everything `usedge doctor [MODEL]` prints, in order."""
    info = [Check("system", "python", True, f"{platform.python_version()} ({sys.executable})"),
            Check("system", "platform", True, f"{platform.platform()}, {os.cpu_count()} CPU cores")]
    return (info + cpu_checks() + package_checks() + provider_checks() + backend_checks() + trial_checks() + gpu_checks()
            + video_checks() + dicom_checks() + (model_checks(model) if model is not None else []))
