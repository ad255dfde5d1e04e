# observer's image: every stage and the GPU collector, chosen by the command
# (`up`, `collect`, `normalize`, `paths`, `drift`, `trigger`, `metrics`, `collect-gpu`).
FROM python:3.11-slim AS build
# A C compiler for collectors._trace_split (the receivers' trace split); the runtime stage
# below gets the built extension, not the compiler.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY observer ./observer
COPY collectors ./collectors
COPY drift ./drift
COPY triggers ./triggers
COPY dashboards ./dashboards
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
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
