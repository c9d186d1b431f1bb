# The fracgpu image: the extender (fracgpu-extender serve) and the node agent (fracgpu-agent run). Non-root.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY extender extender
COPY simulator simulator
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
USER 65532:65532
ENTRYPOINT []
CMD ["fracgpu-extender", "serve"]
