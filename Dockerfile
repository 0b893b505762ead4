# syntax=docker/dockerfile:1
#
# qris-guard: the `qris-guard` CLI (worker, topics, simulate, report, replay, dump, settings)
# on Python 3.11. See docs/docker.md; docker-compose.yml runs it beside an Apache Kafka broker.
#
#   docker build -t qris-guard:local .                              # the compiled build
#   docker build --build-arg BUILD=source -t qris-guard:local .     # the sources only
#   docker run --rm qris-guard:local settings
#
# BUILD=compiled (the default) ships the compiled build (README, "The compiled build"):
# the hot core compiled by mypyc in the `build-compiled` stage, the only stage with a C
# compiler; the runtime image has none. BUILD=source ships the `.py` files alone, and
# `build-compiled` is not built (BuildKit builds only the stages the target needs).
#
# No compiler is needed for the dependencies: every pinned one (rocksdict, river, numpy/scipy,
# orjson, aiokafka, faust-streaming) ships a manylinux wheel for CPython 3.11 on linux/amd64. On
# linux/arm64 all but faust-streaming have wheels; its sdist builds without a compiler, falling
# back to pure Python for its optional Cython speed-ups.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# compiled or source, as stream.BUILD says at run time. (Not QRIS_BUILD: `--build-arg NAME`
# alone takes the value from the shell, where qris-guard refuses an unknown QRIS_* name.)
ARG BUILD=compiled

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
# /opt/qris-guard: what the runtime image puts before the installed package on the path. From
# the sources only, nothing.
RUN mkdir /opt/qris-guard

# --- source: the installed package alone --------------------------------------------------------
FROM build AS build-source

# --- compiled: bench/build_compiled.py with gcc and mypyc ---------------------------------------
FROM build AS build-compiled

# gcc and libc's headers (the image has Python's own); this stage only. mypy (mypyc), pinned by
# pyproject's dev list, goes to /opt/mypyc, outside the virtualenv the runtime image copies:
# bench/build_compiled.py runs mypyc with the virtualenv's Python, so that it type-checks the
# package against the installed dependencies. The compiled copy is checked against its sources
# at every import (stream/buildinfo.py): they go beside it, laid out as in the repository
# (/opt/qris-guard/stream and /opt/qris-guard/build/compiled).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -c "import tomllib; print('\n'.join(d for d in tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['dev'] if d.startswith('mypy==')))" \
        > /tmp/mypyc.txt \
    && pip install --target /opt/mypyc -r /tmp/mypyc.txt
# The build runs from /opt/qris-guard, so that the manifest finds the sources where they stay;
# the copy's Python modules are then byte-compiled, as pip does for the installed package.
# Everything there is made readable to all: `cp` keeps the build context's modes, and a checkout
# made with umask 077 would leave the sources unreadable to the runtime user, whose every
# import of the copy reads them (the stale check).
RUN mkdir /opt/qris-guard/bench \
    && cp -r stream /opt/qris-guard/stream \
    && cp bench/build_compiled.py /opt/qris-guard/bench/ \
    && cd /opt/qris-guard \
    && PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=/opt/mypyc python bench/build_compiled.py \
    && rm -r bench \
    && python -m compileall -q build/compiled/stream \
    && chmod -R a+rX /opt/qris-guard \
    && cd / \
    && PYTHONSAFEPATH=1 PYTHONPATH=/opt/qris-guard/build/compiled python -c \
        'import stream as s, sys; s.BUILD == "compiled" or sys.exit(s.buildinfo.describe())'

# --- app: the stage BUILD names ----------------------------------------------------------------
FROM build-${BUILD} AS app

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

COPY --from=app /opt/venv /opt/venv
COPY --from=app /opt/qris-guard /opt/qris-guard

# QRIS_DATA_DIR: the worker's RocksDB tables (Faust datadir). Mount a volume here: a worker that
# restarts with its tables only catches up from the changelog instead of rebuilding them.
# PYTHONPATH: the compiled copy, when there is one, before the installed package (a missing
# directory on it is skipped); PYTHONSAFEPATH keeps the current directory off the path, as
# the Makefile's RUN_COMPILED does. The worker logs which build runs (`build: compiled ...`).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/qris-guard/build/compiled \
    PYTHONSAFEPATH=1 \
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
