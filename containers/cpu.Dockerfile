# Slim CPU image for the light steps (ingest, split, evaluate, report) and the CLI.
# Build from the repository root:  docker build -f containers/cpu.Dockerfile -t histoxai-cpu .
# Base image: exact tag plus digest; refresh both together (docker buildx imagetools inspect <tag>).
ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm@sha256:d29f48a31a8b408ed19272ca1e7b10ebae13b240a27e862d3d4217c528e2e0c3

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, from the hashed lock alone (every file checked by its sha256): this layer is
# rebuilt only when the lock changes. pip, setuptools and wheel come first, so the one source
# distribution builds with them (--no-build-isolation) instead of an unchecked download.
COPY requirements-build-lock.txt containers/requirements-cpu-lock.txt ./
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir --require-hashes -r requirements-build-lock.txt \
    && pip install --no-cache-dir --require-hashes --no-build-isolation -r requirements-cpu-lock.txt
COPY . .
RUN pip install --no-cache-dir --no-deps --no-build-isolation . && pip check && histoxai --help > /dev/null

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --gid 10001 histoxai \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin histoxai
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /home/histoxai
CMD ["histoxai", "--help"]
