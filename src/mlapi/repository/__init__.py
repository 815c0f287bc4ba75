"""The model repository on disk: ``MODEL_PATH/<name>/<version>/`` folders."""
