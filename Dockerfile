# syntax=docker/dockerfile:1
#
# qris-guard: the `qris-guard` CLI (worker, topics, simulate, report, replay, dump, settings)
# on Python 3.11. See docs/docker.md; docker-compose.yml runs it beside an Apache Kafka broker.
#
#   docker build -t qris-guard:local .
#   docker run --rm qris-guard:local settings
#
# No compiler is installed: every pinned dependency (rocksdict, river, numpy/scipy, orjson,
# aiokafka, faust-streaming) ships a manylinux wheel for CPython 3.11 on linux/amd64. On
# linux/arm64 all but faust-streaming have wheels; its sdist builds without a compiler, falling
# back to pure Python for its optional Cython speed-ups.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtualenv in /opt/venv holding the package and its pinned dependencies ---------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, straight from pyproject's pinned list, so that editing stream/ does not
# download them again.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# Then the package itself (a regular, non-editable install: /src is not needed at run time).
COPY . ./
RUN pip install . \
    && qris-guard --help >/dev/null \
    && python -c "import rocksdict, faust, river, orjson, aiokafka, kafka, uvloop, prometheus_client"

# --- runtime ----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

# A fixed, unprivileged uid/gid (numeric USER lets Kubernetes' runAsNonRoot check it).
ARG UID=10001
ARG GID=10001
RUN groupadd --system --gid "${GID}" qris \
    && useradd --system --uid "${UID}" --gid qris --home-dir /home/qris --create-home \
        --shell /usr/sbin/nologin qris \
    && mkdir -p /var/lib/qris-guard \
    && chown qris:qris /var/lib/qris-guard

COPY --from=build /opt/venv /opt/venv

# QRIS_DATA_DIR: the worker's RocksDB tables (Faust datadir). Mount a volume here: a worker that
# restarts with its tables only catches up from the changelog instead of rebuilding them.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    QRIS_DATA_DIR=/var/lib/qris-guard

USER ${UID}:${GID}
WORKDIR /home/qris
VOLUME ["/var/lib/qris-guard"]
# The worker's web endpoints (QRIS_WEB_PORT; /qris/stats, /qris/ready).
EXPOSE 6066

ENTRYPOINT ["qris-guard"]
CMD ["--help"]
