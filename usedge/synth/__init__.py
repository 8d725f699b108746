"""Synthetic ultrasound phantom: B-mode images of benign skin tumours, scanner screens and videos.

numpy + OpenCV only (never torch). Entry points:
    usedge.synth.cohort.make_cohort            data set on disk (ImageFolder + masks + manifest.csv)
    usedge.synth.scanner.render_scanner_frame  a B-mode image inside a scanner screen + truth
    usedge.synth.frames.write_scanner_frames   many screens + truth.jsonl
    usedge.synth.video.write_scanner_video     a scanner video + per-frame truth JSON
"""
