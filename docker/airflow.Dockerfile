# syntax=docker/dockerfile:1
# Airflow's components (api-server, scheduler, dag-processor, triggerer, Celery workers) and,
# as the target `training`, the Celery workers of the training queue. From the repository root:
#   docker build -f docker/airflow.Dockerfile -t recloop-airflow:0.1.0 .
#   docker build -f docker/airflow.Dockerfile --target training -t recloop-training:0.1.0 .
#
# Training is a target of this file rather than a Dockerfile of its own: both images run the
# same task code from the same lock (one resolve, torch included: the metrics DAG loads neural
# models too when it scores them off-policy), so they share every layer up to the last; the
# training target only changes the worker's defaults (its queue, one task at a time).

FROM python:3.11.14-slim-bookworm AS airflow

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# uid 50000, gid 0: the official Airflow image's convention (arbitrary-uid platforms run as
# a member of group 0, so everything the user writes is group-0 writable).
RUN useradd --uid 50000 --gid 0 --no-log-init --create-home --home-dir /home/airflow airflow \
    && python -m venv /opt/venv

WORKDIR /opt/recloop

# The lock alone first, so that code changes do not reinstall ~300 packages. The lock's own
# pip comes first, hash-checked (as `make setup` does: older pips mishandle extras under
# --require-hashes). torch==2.13.0+cpu lies on PyTorch's CPU index, everything else on PyPI;
# a mirror that serves both can be given with --build-arg PIP_INDEX_URL=...
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY requirements.lock ./
RUN awk '/^pip==/ {keep = 1} keep && /^ *#/ {exit} keep' requirements.lock > /tmp/pip.txt \
    && pip install --require-hashes -r /tmp/pip.txt \
    && pip install --require-hashes -r requirements.lock \
    && rm /tmp/pip.txt

# Editable, as `make setup` installs it: recloop finds dbt_project/ next to its package.
COPY pyproject.toml README.md ./
COPY recloop/ recloop/
COPY training/ training/
COPY serving/ serving/
COPY monitoring/ monitoring/
COPY feature_repo/ feature_repo/
COPY dbt_project/ dbt_project/
COPY dags/ dags/
RUN pip install --no-deps --no-build-isolation -e .

# State lives in volumes (compose mounts them here); the directories exist in the image so
# that a fresh named volume starts owned by the airflow user.
ENV AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/recloop/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    RECLOOP_HOME=/var/lib/recloop
RUN mkdir -p /opt/airflow/logs /opt/airflow/auth /var/lib/recloop /var/lib/mlflow \
    && chown -R airflow:0 /opt/airflow /var/lib/recloop /var/lib/mlflow \
    && chmod -R g+rwX /opt/airflow /var/lib/recloop /var/lib/mlflow

USER airflow
CMD ["airflow", "version"]

FROM airflow AS training
# One training task at a time per worker: each one uses every core it is given. Started through
# recloop.airflow_preload, so the tasks forked from it find Feast and MLflow imported.
CMD ["python", "-m", "recloop.airflow_preload", "celery", "worker", "--queues", "training", "--concurrency", "1"]
