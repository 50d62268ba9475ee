# wsd container image. Three stages:
#   prebuilt: the runtime image around a static binary built on the host
#             (bin/wsd, CGO_ENABLED=0). It is first so that the legacy
#             builder, which builds stages in order up to --target, needs
#             no base image at all: this is how the e2e suite builds wsd
#             on machines that cannot pull images.
#   build:    compiles wsd in the official Go image (needs a registry).
#   runtime:  the same runtime image, from the build stage. Default target.
# With BuildKit (Compose v2, `docker build` ≥ 23) only the stages the
# target needs are built; `docker compose build` uses target runtime.

FROM scratch AS prebuilt
COPY bin/wsd /wsd
USER 65534:65534
EXPOSE 8080 9090
# scratch has no shell or curl: the binary probes its own admin listener.
HEALTHCHECK --interval=10s --timeout=4s --start-period=5s --retries=3 CMD ["/wsd", "healthcheck"]
ENTRYPOINT ["/wsd"]

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/wsd ./cmd/wsd

FROM scratch AS runtime
COPY --from=build /out/wsd /wsd
USER 65534:65534
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=4s --start-period=5s --retries=3 CMD ["/wsd", "healthcheck"]
ENTRYPOINT ["/wsd"]
