"""ml-api: a fast, safe model server speaking the Open Inference Protocol (V2)."""

__version__ = "0.1.0"
