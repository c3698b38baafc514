# Builds teamchat-gateway and teamchat-worker; compose.yaml picks the binary with `command`.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p teamchat-gateway -p teamchat-worker

FROM debian:bookworm-slim
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin teamchat
COPY --from=build /src/target/release/teamchat-gateway /src/target/release/teamchat-worker /usr/local/bin/
USER teamchat
