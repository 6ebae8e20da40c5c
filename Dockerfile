# syntax=docker/dockerfile:1
# The asset-event-sink worker image: `asset-sink run` by default, any subcommand as arguments
# (`migrate`, `partitions ensure --ahead 3`, `validate`).

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: install the package and its dependencies into a virtualenv ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sink ./sink
# The wheel force-includes these as sink/_data/ddl and sink/_data/schemas (see pyproject.toml).
COPY ddl ./ddl
COPY schemas ./schemas
# Non-editable install: the runtime stage gets the package, not a link to /src.
RUN /opt/venv/bin/pip install . \
    && /opt/venv/bin/asset-sink --version

# ---- runtime: the virtualenv only, run as an unprivileged user ----
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 sink \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin sink
COPY --from=build /opt/venv /opt/venv
# Bytecode was compiled at install time; the root filesystem may be read-only at run time.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /tmp
# /metrics, /healthz, /readyz (SINK_METRICS_PORT).
EXPOSE 9108
ENTRYPOINT ["asset-sink"]
CMD ["run"]
