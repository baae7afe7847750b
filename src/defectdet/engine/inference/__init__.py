"""The one inference path: inputs (sources), preprocessing and loading, detectors behind one
interface (torch, onnxruntime), and the run from images to detections in original pixels."""
