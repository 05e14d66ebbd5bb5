# syntax=docker/dockerfile:1
# buddycast image: one image for every role (node, worker, migrate).
#   docker build -t buddycast:0.1.0 .
#   docker run --rm -p 8080:8080 --env-file prod.env buddycast:0.1.0 node
#   docker run --rm -p 9091:9091 --env-file prod.env buddycast:0.1.0 worker
# The same Python image in both stages, so the wheels built here match the runtime.

# ---- build: wheels of the dependencies, then of the project ----
FROM python:3.11-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip wheel --no-cache-dir --wheel-dir /wheels -r /tmp/requirements.txt

# Then the project itself; its dependencies are already in /wheels.
COPY service/ ./service/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- runtime: installs from /wheels only, runs as a numeric non-root user ----
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BUDDYCAST_HOST=0.0.0.0

# The wheels are bind-mounted, not copied: they never land in a layer of this image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels /wheels/buddycast-*.whl \
    && groupadd --gid 10001 buddycast \
    && useradd --no-log-init --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin buddycast

# A read-only working directory: settings come from the environment, not from a .env here.
WORKDIR /app

USER 10001

# 8080: node WebSocket + HTTP (/healthz, /readyz, /metrics); 9091: worker health and metrics.
EXPOSE 8080 9091

# No curl in slim: the standard library does the check. For a worker container set
# HEALTHCHECK_URL=http://127.0.0.1:9091/healthz (Kubernetes ignores HEALTHCHECK and uses probes).
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; url = os.environ.get('HEALTHCHECK_URL', 'http://127.0.0.1:8080/healthz'); sys.exit(0 if urllib.request.urlopen(url, timeout=2).status == 200 else 1)"]

ENTRYPOINT ["buddycast"]
CMD ["node"]
