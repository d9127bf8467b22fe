# The README's two commands: `make run` (set up, then run on embedded defaults) and
# `make test` (set up, then run the whole test suite). Both are idempotent: the virtualenv is
# rebuilt only when pyproject.toml changes, the gRPC code only when a .proto changes, and
# `faceguard models build` does nothing when the models are already built (downloads and
# conversions are cached per user).
VENV := .venv
BIN := $(VENV)/bin
PROTOS := $(wildcard protos/faceguard/v1/*.proto)
GENERATED := $(patsubst protos/%.proto,%_pb2.py,$(PROTOS))

.PHONY: setup run test milvus-server

$(BIN)/faceguard: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,protos,milvus]' --config-settings editable_mode=compat
	touch $@

# Generated gRPC code (a top-level `faceguard` package, as the proto package is named): built
# here, never edited, never committed.
$(GENERATED) &: $(PROTOS) $(BIN)/faceguard
	$(BIN)/python -m grpc_tools.protoc -I protos --python_out=. --pyi_out=. \
		--grpc_python_out=. $(PROTOS)

setup: $(BIN)/faceguard $(GENERATED)
	$(BIN)/faceguard models build
	$(BIN)/python -m service.api.console.assets

# Development: plaintext gRPC on loopback, and the web console on https://127.0.0.1:8443/ with
# development certificates (data/dev-pki: import analyst.pem/.key or admin.pem/.key).
DEV_PKI := data/dev-pki
run: setup
	test -f $(DEV_PKI)/ca.pem || $(BIN)/faceguard certs dev --out $(DEV_PKI)
	FACEGUARD_CONSOLE__ENABLED=true FACEGUARD_CONSOLE__TLS_CERT=$(DEV_PKI)/server.pem \
	FACEGUARD_CONSOLE__TLS_KEY=$(DEV_PKI)/server.key FACEGUARD_CONSOLE__CLIENT_CA=$(DEV_PKI)/ca.pem \
	$(BIN)/faceguard serve --dev-key

test: setup
	$(BIN)/python -m pytest

# A real Milvus standalone server for the Milvus backend's tests (tests/milvus.py): the PyPI
# `milvus` package pins protobuf<5, so it gets a virtualenv of its own, made once per user.
MILVUS_VENV ?= $(HOME)/.cache/faceguard/milvus-venv

milvus-server: $(MILVUS_VENV)/bin/milvus-server

$(MILVUS_VENV)/bin/milvus-server:
	python3 -m venv $(MILVUS_VENV)
	$(MILVUS_VENV)/bin/pip install --quiet milvus==2.3.5
