# Multi-stage build: both binaries plus the ONNX Runtime library in one small
# runtime image, run as a non-root user. The same image runs `api` or `worker`.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY shared shared
COPY api api
COPY worker worker
COPY e2e e2e
RUN cargo build --release --locked -p api -p worker

# The ONNX Runtime shared library ships inside the onnxruntime wheel on PyPI.
FROM python:3.11-slim-bookworm AS ort
ARG ORT_VERSION=1.31.1
RUN pip download --no-deps --only-binary=:all: "onnxruntime==${ORT_VERSION}" -d /wheels \
 && python -c "import zipfile,glob; z=zipfile.ZipFile(glob.glob('/wheels/*.whl')[0]); \
n=max((n for n in z.namelist() if n.startswith('onnxruntime/capi/libonnxruntime.so')), key=len); \
open('/libonnxruntime.so','wb').write(z.read(n))"

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libstdc++6 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home app
COPY --from=build /src/target/release/api /src/target/release/worker /usr/local/bin/
COPY --from=ort /libonnxruntime.so /usr/local/lib/libonnxruntime.so
COPY models /models
ENV ORT_DYLIB_PATH=/usr/local/lib/libonnxruntime.so \
    MODELS_DIR=/models \
    LOG_FORMAT=json
USER app
EXPOSE 8080
CMD ["api"]
