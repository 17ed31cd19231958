# syntax=docker/dockerfile:1
# keruta-harvester's image: the `harvester` and `keruta-agent` commands on Debian bookworm's
# python3 (3.11, the Python the tests run on), as a numeric non-root user, working on a
# read-only root filesystem (only /tmp is written).
#
#   make image IMAGE=registry.example.com/keruta-harvester:0.1.0
#   podman push registry.example.com/keruta-harvester:0.1.0     (or docker push)
#
# Every stage starts from BASE_IMAGE, plain Debian: a release takes debian:bookworm-slim from
# the registry; `make image-test` builds this same file on a bookworm made locally with
# mmdebstrap (tests/image/base.sh). Everything above the base comes from Debian's packages and
# the hash-pinned requirements.lock, so the image tested and the image shipped differ only in how
# the base was fetched.

ARG BASE_IMAGE=debian:bookworm-slim

# Debian's python3 and the CA store (keruta-api over https), shared by the two stages below.
FROM ${BASE_IMAGE} AS python
# `apt-get clean`: the registry's debian image is set to drop the downloaded packages, other
# bases are not.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*

# Stage 1: the virtualenv the image runs, filled here and copied whole into stage 2. pip runs
# from a virtualenv of Debian's pip beside it (so pip itself stays out) and trusts the system CA
# store. The dependencies are the exact files requirements.lock pins (hashes checked, prebuilt
# wheels only) and come first, so a change to the code reuses their layer; the project is built
# from `.`, never looked up by name, so a package of the same name on the index can never take
# its place, and without extras (the dev-api stays out). pip compiles the bytecode now, while the
# filesystem is writable: at run time the root filesystem is read-only and Python must not try
# to write .pyc files. `pip check` fails the build if the lock no longer satisfies the project.
FROM python AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/pip \
 && python3 -m venv --without-pip /opt/keruta-harvester
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
COPY requirements.lock /tmp/
RUN /opt/pip/bin/pip --python /opt/keruta-harvester/bin/python install \
        --require-hashes --no-deps --only-binary=:all: --requirement /tmp/requirements.lock
WORKDIR /src
# Only what the wheel is built from (README.md is the package's long description).
COPY pyproject.toml README.md ./
COPY harvester/ harvester/
RUN /opt/pip/bin/pip --python /opt/keruta-harvester/bin/python install --no-deps . \
 && /opt/pip/bin/pip --python /opt/keruta-harvester/bin/python check

# Stage 2: the installed virtualenv and nothing else from stage 1: no compiler, no pip, no
# wheels, no source tree, no cache. (Copied, not installed here from wheels bind-mounted from
# stage 1: Debian bookworm's podman 4.3 mounts a cached stage's older content, podman#16281, and
# keeps such a step cached when the stage changed, podman#17119.)
FROM python
LABEL org.opencontainers.image.title="keruta-harvester" \
      org.opencontainers.image.description="Harvests a keruta task's documents into keruta-api, then releases its volume." \
      org.opencontainers.image.licenses="MIT"
COPY --from=build /opt/keruta-harvester /opt/keruta-harvester
RUN groupadd --system --gid 10001 harvester \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin harvester \
 && /opt/keruta-harvester/bin/keruta-agent --help > /dev/null
ENV PATH=/opt/keruta-harvester/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
WORKDIR /tmp
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
# No ENTRYPOINT: Jobs give the whole command line (the seed's starts with `keruta-agent`).
CMD ["harvester", "--help"]
