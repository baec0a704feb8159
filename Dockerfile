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
# The coordinator's /health, at the URL it wrote when it started listening (its own CA).
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD curl -fsS --cacert /var/lib/bitnet/tls/ca.pem "$(cat /var/lib/bitnet/run/coordinator.url)/health" || exit 1
ENTRYPOINT ["bitnet"]
CMD ["--help"]
