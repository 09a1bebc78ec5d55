# Multi-stage build: the binaries (api, worker, jobctl) plus the ONNX Runtime
# library in one small runtime image, run as a non-root user. The same image
# runs `api` or `worker`; `jobctl` is there for operators.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# The whole workspace (every member must be present for cargo to resolve it);
# .dockerignore keeps target/ and local files out.
COPY . .
RUN cargo build --release --locked -p api -p worker -p jobctl

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
COPY --from=build /src/target/release/api /src/target/release/worker /src/target/release/jobctl /usr/local/bin/
COPY --from=ort /libonnxruntime.so /usr/local/lib/libonnxruntime.so
COPY models /models
ENV ORT_DYLIB_PATH=/usr/local/lib/libonnxruntime.so \
    MODELS_DIR=/models \
    LOG_FORMAT=json
USER app
EXPOSE 8080
CMD ["api"]
