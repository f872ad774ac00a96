# The stopdrift image: one console command (`stopdrift`), every subcommand. docker-compose.yml
# runs it as the topics job, MLflow, the trainer, the workers, the producer and the drift view:
#   docker build -t stopdrift:local .
#   docker run --rm stopdrift:local --help
# The exact Python the lock was tested with, on the Debian release of the test machines.
FROM python:3.11.7-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# LightGBM (PyCaret's models) needs the system OpenMP runtime; the slim image has none.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# Exactly the distributions of requirements.lock (hashes checked; the Postgres driver of MLflow's
# store among them), in a layer of their own that only a new lock rebuilds; then the project,
# without resolving anything. Only the tables under data/ are kept: the code is in site-packages.
WORKDIR /src
COPY requirements.lock .
RUN pip install --require-hashes --no-deps -r requirements.lock
COPY . .
RUN pip install --no-deps --no-build-isolation . \
    && mkdir -p /app \
    && cp -r data /app/data \
    && rm -rf /src

# A non-root user. The directories that compose mounts named volumes on exist in the image with
# this owner, so a new volume starts with it (Docker copies the mount point's ownership).
RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin stopdrift \
    && mkdir -p /app/runs /mlflow/artifacts \
    && chown -R stopdrift:stopdrift /app/runs /mlflow

# Installed (not editable), the settings' defaults would point into site-packages: name the
# data and runs directories explicitly.
ENV STOPDRIFT_DATA_DIR=/app/data \
    STOPDRIFT_RUNS_DIR=/app/runs

USER stopdrift
WORKDIR /home/stopdrift
ENTRYPOINT ["stopdrift"]
CMD ["--help"]
