"""Checkpoint -> deployable files, one small module per format (torch and onnx live here, never in runtime/).

    wrapper.py      ExportModel: image -> probs (softmax) [+ cam]
    onnx_export.py  model.onnx (FP32, opset 18, dynamic batch, metadata) + onnx.checker
    parity.py       torch vs onnxruntime vs onnx.reference; precision vs precision
    fp16.py         model.fp16.onnx (FP16 compute, FP32 I/O) — the TensorRT build's input
    int8.py         model.int8.onnx (QDQ static quantisation for CPUs)
    tensorrt.py     TensorRT engine (strongly typed) + sidecar, on the target GPU
    triton.py       Triton Inference Server model repository
    images.py       real images for parity and calibration, preprocessed like the runtime
    report.py       export_report.json / .md
    pipeline.py     run_export: all of the above for `usedge export`, staged and atomic
"""
