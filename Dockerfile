# Multi-stage build: the binaries (api, worker, jobctl) plus the ONNX Runtime
# library in one small runtime image, run as a non-root user. The same image
# runs `api` or `worker`; `jobctl` is there for operators. compose.yaml and
# deploy/k8s/ use it; e2e/tests/deploy.rs checks that the paths and the user
# below agree with them.

FROM rust:1.95.0-bookworm AS build
WORKDIR /src
# The whole workspace (every member must be present for cargo to resolve it);
# .dockerignore keeps target/ and local files out.
COPY . .
RUN cargo build --release --locked -p api -p worker -p jobctl

# The ONNX Runtime shared library ships inside the onnxruntime wheel on PyPI
# (1.31.x matches the `api-31` feature of the ort crate). pip picks the wheel
# of the build platform, so an arm64 build gets the arm64 library.
FROM python:3.11-slim-bookworm AS ort
ARG ORT_VERSION=1.31.1
RUN pip download --no-deps --only-binary=:all: "onnxruntime==${ORT_VERSION}" -d /wheels \
 && python -c "import zipfile,glob; z=zipfile.ZipFile(glob.glob('/wheels/*.whl')[0]); \
n=max((n for n in z.namelist() if n.startswith('onnxruntime/capi/libonnxruntime.so')), key=len); \
open('/libonnxruntime.so','wb').write(z.read(n))"

FROM debian:bookworm-slim
# libstdc++6: ONNX Runtime's only dependency beyond libc. curl: the compose
# healthchecks (GET /healthz from inside the container).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libstdc++6 ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin app
COPY --from=build /src/target/release/api /src/target/release/worker /src/target/release/jobctl /usr/local/bin/
COPY --from=ort /libonnxruntime.so /usr/local/lib/libonnxruntime.so
# Only the served models: the worker loads every *.onnx directly in MODELS_DIR
# (test models and fixtures stay out of the image).
COPY models/*.onnx /models/
# ORT_DISABLE_TELEMETRY: ONNX Runtime 1.31 otherwise keeps a telemetry
# database under $HOME (~/.cache/Microsoft/DeveloperTools).
ENV ORT_DYLIB_PATH=/usr/local/lib/libonnxruntime.so \
    MODELS_DIR=/models \
    LOG_FORMAT=json \
    ORT_DISABLE_TELEMETRY=1
# A working directory of the service user's own, empty: nothing a model could
# name relative to it (ONNX Runtime resolves some relative paths against the
# working directory; the worker refuses such models anyway).
RUN mkdir -p /home/app && chown 10001:10001 /home/app && chmod 0700 /home/app
WORKDIR /home/app
# Numeric, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
USER 10001:10001
# 8080: the API (LISTEN_ADDR); 9090: a worker's /metrics, /healthz, /readyz
# (METRICS_LISTEN, off unless set).
EXPOSE 8080 9090
CMD ["api"]
