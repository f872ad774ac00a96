# The stopdrift image: one console command (`stopdrift`), every subcommand. docker-compose.yml
# runs it as the topics job, MLflow, the trainer, the workers, the producer and the drift view:
#   docker build -t stopdrift:local .
#   docker run --rm stopdrift:local --help
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# LightGBM (PyCaret's models) needs the system OpenMP runtime; the slim image has none.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# The project (see .dockerignore for what stays out) and the Postgres driver of MLflow's store.
# Only the tables under data/ are kept after the install: the code lives in site-packages.
WORKDIR /src
COPY . .
RUN pip install . "psycopg2-binary>=2.9,<3" \
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
