# GPU image for the heavy steps (tune, train, predict, explain): TensorFlow with CUDA from pip wheels.
# Build from the repository root:  docker build -f containers/gpu.Dockerfile -t histoxai-gpu .
# The CUDA user-space libraries come as pip wheels (tensorflow[and-cuda]); the driver comes from the
# host (Vertex AI, GKE and `docker run --gpus all` mount it). Without a GPU it runs on the CPU.
# Base image: exact tag plus digest; refresh both together (docker buildx imagetools inspect <tag>).
ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm@sha256:d29f48a31a8b408ed19272ca1e7b10ebae13b240a27e862d3d4217c528e2e0c3

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, from the hashed lock alone: this layer is rebuilt only when the lock changes.
# requirements-gpu-lock.txt holds the project's runtime dependencies at the versions of constraints.txt,
# with tensorflow (of tensorflow[and-cuda]) in place of tensorflow-cpu and the CUDA wheels of
# cuda-constraints.txt, every file checked by its sha256. The project then goes in with --no-deps, so
# tensorflow-cpu never lands beside tensorflow (both own the same `tensorflow` package folder).
COPY requirements-build-lock.txt containers/requirements-gpu-lock.txt ./
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir --require-hashes -r requirements-build-lock.txt \
    && pip install --no-cache-dir --require-hashes --no-build-isolation -r requirements-gpu-lock.txt
COPY . .
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && python -c "import tensorflow as tf, histoxai; print('tensorflow', tf.__version__, tf.sysconfig.get_build_info()['cuda_version'])"

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    TF_CPP_MIN_LOG_LEVEL=1
RUN groupadd --gid 10001 histoxai \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin histoxai
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /home/histoxai
CMD ["histoxai", "--help"]
