# ml-api: one Dockerfile, two targets.
#   development: hot reload of a read-only bind-mounted ./src, debugpy on 5678
#   production:  only the virtual environment and the app, non-root 1000:1000
# The base image is a build argument (any Debian-like image with Python >= 3.11
# and its venv module); the default is the official slim image.
ARG PYTHON_IMAGE=python:3.12-slim

# ---- builder: a virtual environment with the dependencies, then the app -------
FROM ${PYTHON_IMAGE} AS builder
# onnxruntime-gpu for docker-compose.gpu.yml; the CPU build otherwise.
ARG ONNXRUNTIME_PACKAGE=onnxruntime
# Optional parts, comma-separated: "sklearn" adds scikit-learn and skops (about
# 170 MB) for skops models; "text" adds the tokenizers library (about 8 MB; without
# huggingface-hub, which only downloads from the Hub) for text models; "trees" adds
# XGBoost (CPU build) and LightGBM (about 210 MB, mostly SciPy). The default image
# serves ONNX and Python models.
ARG MLAPI_EXTRAS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
SHELL ["/bin/sh", "-eu", "-c"]
RUN python3 -m venv /opt/venv
WORKDIR /build
COPY pyproject.toml README.md ./
# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml
# changes. The optional build secret pip_ca is a CA bundle for a TLS-intercepting
# proxy; it is mounted for this step only and never stored in a layer.
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    python3 -c "import os, re, tomllib; \
project = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = [e.strip() for e in os.environ['MLAPI_EXTRAS'].split(',') if e.strip()]; \
deps = project['dependencies'] + [d for e in extras for d in project['optional-dependencies'][e]]; \
pkg = os.environ['ONNXRUNTIME_PACKAGE']; \
print('\n'.join(re.sub(r'^onnxruntime(?=[<>=!~ ]|$)', pkg, d) for d in deps))" > /tmp/requirements.txt; \
    grep -v '^tokenizers' /tmp/requirements.txt > /tmp/with-deps.txt || true; \
    /opt/venv/bin/pip install -r /tmp/with-deps.txt; \
    if grep -q '^tokenizers' /tmp/requirements.txt; then \
        /opt/venv/bin/pip install --no-deps "$(grep '^tokenizers' /tmp/requirements.txt)"; \
    fi
COPY src ./src
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    /opt/venv/bin/pip install --no-deps .

# What production copies: the same venv without what no server runs: debug
# symbols, the installer, third-party test suites, uvicorn's reload and websocket
# extras (the dev target keeps them), onnxruntime's model-conversion tools and the
# libraries only they use (flatbuffers, packaging; not protobuf, which the gRPC
# front reads its messages with), numpy's C headers and
# test-only extension modules (not f2py: `from numpy import *` imports it),
# pydantic's v1 copy, type stubs, Cython sources, and pip's RECORD files (nothing
# uninstalls here: pip is gone). And onnxruntime's C-API library (35 MB): the wheel
# ships it for C programs; its Python module has the runtime built in and never loads
# it, nor does any provider library beside it (CUDA's included, in onnxruntime-gpu
# 1.31); removed only while none of them links it, as readelf shows.
FROM builder AS venv-prod
# The libraries' debug symbols (uvloop alone carries 10 MB) go with binutils' strip;
# not the libraries auditwheel vendored (*.libs/): patchelf laid them out so that
# strip breaks them (numpy's OpenBLAS: "ELF load command ... not page-aligned").
# binutils is not pinned: it only runs in this build stage, never ships, and its
# version follows whichever Debian release the base image is.
# hadolint ignore=DL3008
RUN apt-get update -qq; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends binutils \
        >/dev/null; \
    rm -rf /var/lib/apt/lists/*; \
    find /opt/venv -type f -name '*.so*' -not -path '*.libs/*' \
        -exec strip --strip-unneeded {} +; \
    /opt/venv/bin/python -m pip uninstall -q -y pip setuptools wheel \
        watchfiles websockets pyyaml flatbuffers packaging 2>/dev/null || true; \
    site=$(/opt/venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"); \
    rm -rf "$site"/onnxruntime/transformers "$site"/onnxruntime/tools \
        "$site"/onnxruntime/quantization "$site"/onnxruntime/datasets \
        "$site"/onnxruntime/backend "$site"/numpy/distutils \
        "$site"/numpy/_core/include "$site"/numpy/_core/_simd.* \
        "$site"/numpy/_core/_*_tests.* "$site"/pydantic/v1; \
    capi="$site"/onnxruntime/capi; \
    linked=$(find "$capi" -name '*.so*' -not -name 'libonnxruntime.so*' -exec readelf -d {} +); \
    case "$linked" in *"[libonnxruntime.so"*) ;; *) rm -f "$capi"/libonnxruntime.so*;; esac; \
    find /opt/venv/lib -type d -name tests -prune -exec rm -rf {} +; \
    find /opt/venv/lib -type f \( -name '*.pyi' -o -name '*.pyx' -o -name '*.pxd' \
        -o -name '*.c' -o -name '*.h' -o -name RECORD \) -delete

FROM builder AS builder-dev
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    /opt/venv/bin/pip install "debugpy>=1.8"

# ---- runtime: what both targets share --------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG MODEL_VERSION=1
LABEL org.opencontainers.image.title="ml-api" \
      org.opencontainers.image.description="Model server speaking the Open Inference Protocol V2" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.mlapi.model-version="${MODEL_VERSION}"
# XGBoost's library links the OpenMP runtime, which slim bases leave out.
ARG MLAPI_EXTRAS=""
SHELL ["/bin/sh", "-eu", "-c"]
# No setuid or setgid file is left (su, passwd, mount...): nothing the server runs can
# gain privileges, also where no-new-privileges cannot be set (Docker Swarm ignores
# security_opt).
# /app/repository stays empty: a fresh volume mounted there gets its owner (uid 1000)
# and nothing else, for servers that fill it themselves (MLAPI_SEED_MODELS: the
# Swarm stack), where /app/models is copied into a fresh volume by Docker.
# hadolint ignore=DL3008
RUN groupadd --system --gid 1000 mlapi; \
    useradd --system --uid 1000 --gid 1000 --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin mlapi; \
    mkdir -p /app/models /app/logs /app/cache /app/repository; \
    chown -R 1000:1000 /app; \
    case ",${MLAPI_EXTRAS}," in *,trees,*) \
        apt-get update -qq; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            libgomp1 >/dev/null; \
        rm -rf /var/lib/apt/lists/*;; \
    esac; \
    find / -xdev -type f -perm /6000 -exec chmod ug-s {} +
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    API_HOST=0.0.0.0 \
    API_PORT=8000 \
    API_GRPC_PORT=8001 \
    MODEL_PATH=/app/models \
    MLAPI_CACHE_DIR=/app/cache \
    MLAPI_LOG_DIR=/app/logs
WORKDIR /app
EXPOSE 8000 8001

# ---- development ------------------------------------------------------------------
FROM runtime AS development
COPY --from=builder-dev /opt/venv /opt/venv
COPY --from=builder --chown=1000:1000 /build/src/mlapi/default_models /app/models
COPY --chown=1000:1000 src /app/src
# The bind-mounted ./src (read-only) shadows the installed package, and RELOAD
# restarts the server when a file under it changes.
ENV PYTHONPATH=/app/src \
    RELOAD=true \
    LOG_LEVEL=debug
USER 1000:1000
EXPOSE 5678
ENTRYPOINT ["python", "-Xfrozen_modules=off", "-m", "debugpy", "--listen", "0.0.0.0:5678", "-m", "mlapi.cli"]
CMD ["serve"]

# ---- production (last, so a plain `docker build .` gives it) ------------------------
FROM runtime AS production
COPY --from=venv-prod /opt/venv /opt/venv
COPY --from=builder --chown=1000:1000 /build/src/mlapi/default_models /app/models
USER 1000:1000
# A check costs about 20 ms of CPU (no settings stack), so a short interval is cheap
# and a replica is marked healthy within seconds of its model being ready.
HEALTHCHECK --interval=2s --timeout=3s --start-period=30s --retries=5 \
    CMD ["mlapi", "healthcheck"]
# Exec form: mlapi runs as PID 1 and gets SIGTERM itself (no shell in between).
ENTRYPOINT ["mlapi"]
CMD ["serve"]
