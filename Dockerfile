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
deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
pkg = os.environ['ONNXRUNTIME_PACKAGE']; \
print('\n'.join(re.sub(r'^onnxruntime(?=[<>=!~ ]|$)', pkg, d) for d in deps))" > /tmp/requirements.txt; \
    /opt/venv/bin/pip install -r /tmp/requirements.txt
COPY src ./src
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    /opt/venv/bin/pip install --no-deps .

# What production copies: the same venv without the installer and without the
# third-party test suites (about 60 MB no server needs).
FROM builder AS venv-prod
RUN /opt/venv/bin/python -m pip uninstall -q -y pip setuptools wheel 2>/dev/null || true; \
    find /opt/venv/lib -type d -name tests -prune -exec rm -rf {} +

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
SHELL ["/bin/sh", "-eu", "-c"]
RUN groupadd --system --gid 1000 mlapi; \
    useradd --system --uid 1000 --gid 1000 --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin mlapi; \
    mkdir -p /app/models /app/logs /app/cache; \
    chown -R 1000:1000 /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    API_HOST=0.0.0.0 \
    API_PORT=8000 \
    MODEL_PATH=/app/models \
    MLAPI_CACHE_DIR=/app/cache \
    MLAPI_LOG_DIR=/app/logs
WORKDIR /app
EXPOSE 8000

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
