"""The lean bedside runtime: numpy, opencv, onnxruntime, pydicom. Never imports torch."""
