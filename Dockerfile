# The kernel runtime: HTTP control plane on 9999, Arrow Flight data plane on 8815.
#   docker build -t kernel_runtime:latest .
#   docker run -p 9999:9999 -p 8815:8815 [-v DIR:/shared] [-e KERNEL_PACKAGES=...] IMAGE
# The store (tables, outputs, persisted artifacts) defaults to a private directory in
# /dev/shm, which Docker makes 64 MB: give it room with --shm-size=4g, or a volume at /store
# with -v kernel-store:/store -e KERNEL_STORE_DIR=/store (kept across restarts).
# BASE_IMAGE may be any Debian-like image with python3 and its venv module (curl is added
# when missing); `make image-test` builds on a local debootstrap image this way.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

# pip settings a build machine may need to reach its package index (a proxy's CA bundle, a
# mirror). Build arguments, not ENV: none of them ends up in the image's environment.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_CERT
ARG PIP_DEFAULT_TIMEOUT
ARG PIP_PROXY

# The HEALTHCHECK needs curl; slim images lack it, the debootstrap base has it.
RUN if ! command -v curl >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends curl ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# PATH is spelled out: an imported base image (podman import) has no PATH to extend.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    KERNEL_HOST=0.0.0.0

# The service runs as `kernel`, which owns the venv (so entrypoint.sh can pip-install
# KERNEL_PACKAGES at start), /shared and /store (a volume mounted there takes its owner). Owning them from the start, rather than chown -R
# afterwards, keeps the packages out of a second layer.
RUN useradd --create-home --uid 1000 --user-group --shell /bin/sh kernel \
    && install -d -o kernel -g kernel /opt/venv /app /shared /store
USER kernel
RUN python3 -m venv /opt/venv
WORKDIR /app

# The pinned dependencies first, in their own layer: a code change does not download them again.
COPY --chown=kernel:kernel constraints.txt ./
RUN pip install -r constraints.txt
COPY --chown=kernel:kernel . ./
RUN pip install -c constraints.txt . && pip check && rm -rf build ./*.egg-info

# entrypoint.sh installs KERNEL_PACKAGES under these pins (its KERNEL_CONSTRAINTS default), so a
# user's list never replaces a package of the service. Owned by root: the service cannot edit it.
USER root
COPY entrypoint.sh /entrypoint.sh
COPY constraints.txt /opt/kernel/constraints.txt
RUN chmod 0755 /entrypoint.sh && chmod 0644 /opt/kernel/constraints.txt
USER kernel
WORKDIR /home/kernel

VOLUME ["/shared"]
EXPOSE 9999 8815
# Run by a shell: a KERNEL_HTTP_PORT given to `docker run -e` is the port it checks.
HEALTHCHECK --interval=30s --timeout=10s --start-period=5s --retries=3 \
    CMD curl -f "http://localhost:${KERNEL_HTTP_PORT:-9999}/health" || exit 1
ENTRYPOINT ["/entrypoint.sh"]
