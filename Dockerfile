# observer's images, one per role: the core install plus the extras the role uses
# (pyproject.toml, [project.optional-dependencies]); the command picks the stage
# (`up`, `collect`, `normalize`, `paths`, `drift`, `trigger`, `metrics`, `collect-gpu`).
#
#   target  image                             installs                      runs
#   core    ghcr.io/observer/observer-core    the core                      collect, normalize, paths,
#                                                                           genai-metrics, predictions,
#                                                                           metrics
#   stages  ghcr.io/observer/observer-stages  core + reports, parquet, argo drift (HTML reports),
#                                                                           trigger (exports, Argo runs)
#   gpu     ghcr.io/observer/observer-gpu     core + gpu                    collect-gpu (NVML, Prometheus)
#   full    ghcr.io/observer/observer         core + every extra but spark  up, compose, the pipeline's
#                                                                           evaluate step
#
# `docker build .` builds `full` (the last stage); a role: `docker build --target core -t
# ghcr.io/observer/observer-core:0.1.0 .`. The Spark image of the preprocessing job
# (trigger.pipeline.spark_image) is Spark's own with preprocess.py added, not built here.
FROM python:3.11-slim AS build
# A C compiler for collectors.receiver._trace_split (the receivers' trace split); the images
# below get the built extension, not the compiler.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY observer ./observer
COPY collectors ./collectors
COPY drift ./drift
COPY triggers ./triggers
COPY dashboards ./dashboards
# One wheel (with the C extension) for every role; each installs it with its own extras.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM build AS install-core
RUN pip install --no-cache-dir --prefix=/install /wheels/observer-*.whl

FROM build AS install-stages
RUN wheel=$(ls /wheels/observer-*.whl) \
    && pip install --no-cache-dir --prefix=/install "${wheel}[reports,parquet,argo,armada]"

FROM build AS install-gpu
RUN wheel=$(ls /wheels/observer-*.whl) \
    && pip install --no-cache-dir --prefix=/install "${wheel}[gpu]"

FROM build AS install-full
RUN wheel=$(ls /wheels/observer-*.whl) \
    && pip install --no-cache-dir --prefix=/install "${wheel}[reports,parquet,gpu,argo,embedded,embeddings,armada]"

# What every role shares: the user, the state volume, ports, health check, entry point.
FROM python:3.11-slim AS runtime
RUN useradd --system --uid 10001 --home-dir /var/lib/observer --create-home observer
# Relative paths in the configuration (.observer/ledger.sqlite, exports) land in this volume.
WORKDIR /var/lib/observer
VOLUME /var/lib/observer
USER 10001
# Listen beyond the container's loopback: OTLP receivers and the admin API.
ENV OBSERVER_RECEIVER__HOST=0.0.0.0 \
    OBSERVER_ADMIN__HOST=0.0.0.0 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# OTLP/gRPC, OTLP/HTTP, admin (/metrics, /healthz, /readyz, /api/v1)
EXPOSE 4317 4318 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["observer"]
CMD ["up"]

FROM runtime AS core
COPY --from=install-core /install /usr/local
CMD ["collect"]

FROM runtime AS stages
COPY --from=install-stages /install /usr/local
CMD ["drift"]

FROM runtime AS gpu
COPY --from=install-gpu /install /usr/local
CMD ["collect-gpu"]

# Last, so that `docker build .` and docker compose build it.
FROM runtime AS full
COPY --from=install-full /install /usr/local
CMD ["up"]
