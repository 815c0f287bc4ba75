"""On a peer's PYTHONPATH for bench/text.py --peers: every onnxruntime session it
opens runs on one intra-op and one inter-op thread, as ml-api's does in the bench
(Infinity's ONNX engine opens its session with the library's default, a thread per
core, and has no flag for it)."""

try:
    import onnxruntime as _ort
except ImportError:  # a peer without onnxruntime: nothing to cap
    _ort = None

if _ort is not None:
    _Session = _ort.InferenceSession

    class _OneThread(_Session):  # type: ignore[misc, valid-type]
        def __init__(self, path, sess_options=None, *args, **kwargs):
            options = sess_options or _ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            super().__init__(path, options, *args, **kwargs)

    _ort.InferenceSession = _OneThread
