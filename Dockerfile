# The binderbuild service image (the Helm chart's `image`).
#
#   docker build -t binderbuild/binderbuild:0.1.0 .
#
# Small and unprivileged: a slim Python base, no compilers in the final
# stage, runs as uid 10101 (the chart's runAsUser) with a read-only root
# filesystem (the chart mounts an emptyDir at /tmp). It does not build
# images itself on Kubernetes: build pods do (images/builder/Dockerfile).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /opt/binderbuild
# Dependencies first, so that a code change does not reinstall them.
COPY pyproject.toml README.md ./
COPY binderbuild/__init__.py binderbuild/__init__.py
RUN /opt/venv/bin/pip install . && /opt/venv/bin/pip uninstall -y binderbuild
COPY binderbuild binderbuild
COPY templates templates
COPY static static
# Editable, at the path it keeps in the final stage: binderbuild finds its
# templates/ and static/ next to the package, and its entry points
# (binderbuild.builders, repo2docker.engines) are registered.
RUN /opt/venv/bin/pip install --no-deps -e . \
    && /opt/venv/bin/python -c "import binderbuild.app, binderbuild.builders.kubernetes"

FROM ${PYTHON_IMAGE}
# git: the git provider resolves refs with `git ls-remote`.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10101 --user-group --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin binderbuild
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/binderbuild /opt/binderbuild
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
WORKDIR /tmp
USER 10101:10101
EXPOSE 8585
# tini reaps git subprocesses and forwards SIGTERM, which binderbuild turns
# into a graceful shutdown (build pods keep running and are re-attached).
ENTRYPOINT ["tini", "--", "binderbuild"]
CMD ["--ip=0.0.0.0", "--port=8585"]
