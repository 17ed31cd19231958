# syntax=docker/dockerfile:1
# keruta-harvester's image: the `harvester` and `keruta-agent` commands on a slim Python, as a
# numeric non-root user, working on a read-only root filesystem (only /tmp is written).
#
#   docker build -t registry.example.com/keruta-harvester:0.1.0 .
#   docker push registry.example.com/keruta-harvester:0.1.0
#
# Stage 1 turns the project and its dependencies into wheels; stage 2 installs those wheels and
# nothing else: no compiler, no build tools, no source tree, no pip cache in the final image.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# Only what the wheel is built from (README.md is the package's long description).
COPY pyproject.toml README.md ./
COPY harvester/ harvester/
# The project's wheel and the wheels of everything it depends on (prebuilt wheels from the
# index: nothing here needs a compiler). Built from `.`, never looked up by name, so a package
# of the same name on the index can never take its place.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="keruta-harvester" \
      org.opencontainers.image.description="Harvests a keruta task's documents into keruta-api, then releases its volume." \
      org.opencontainers.image.licenses="MIT"
# The wheels are bind-mounted from the build stage for this one step, so not even they are left
# in a layer. pip compiles the bytecode now, while the filesystem is writable: at run time the
# root filesystem is read-only and Python must not try to write .pyc files.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels \
        --disable-pip-version-check --root-user-action=ignore keruta-harvester \
 && rm -rf /root/.cache \
 && groupadd --system --gid 10001 harvester \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin harvester \
 && keruta-agent --help > /dev/null
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
WORKDIR /tmp
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
# No ENTRYPOINT: Jobs give the whole command line (the seed's starts with `keruta-agent`).
CMD ["harvester", "--help"]
