# syntax=docker/dockerfile:1
# The bitnet image: one binary for the coordinator and the workers.
#   docker build -t bitnet .
#   docker compose up --scale worker=4        (compose.yaml)

FROM rust:1.90-bookworm AS build
WORKDIR /src
COPY . .
# A release build without the line-level debug info the workspace's release profile keeps.
RUN CARGO_PROFILE_RELEASE_DEBUG=0 cargo build --release --locked -p bitnet-cli \
 && strip target/release/bitnet

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/bitnet --create-home bitnet
COPY --from=build /src/target/release/bitnet /usr/local/bin/bitnet
COPY configs /etc/bitnet/configs
COPY deploy/docker/coordinator-entrypoint.sh deploy/docker/worker-entrypoint.sh /usr/local/bin/
USER bitnet:bitnet
WORKDIR /var/lib/bitnet
EXPOSE 8443
# The coordinator's /health over its own TLS, by a name its certificate holds (the entry point
# makes it for `coordinator`, `localhost` and 127.0.0.1 and binds 0.0.0.0:8443; the URL it
# writes names 0.0.0.0, which no certificate holds). Podman keeps a HEALTHCHECK only in docker
# format images (`podman build --format docker`, or BUILDAH_FORMAT=docker for podman-compose).
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD curl -fsS --cacert /var/lib/bitnet/tls/ca.pem https://localhost:8443/health || exit 1
ENTRYPOINT ["bitnet"]
CMD ["--help"]
