# The project's mock upstream (target/release/mock-upstream) on an empty root with the
# glibc libraries it links; deploy/docker/build-images.sh makes the context.
FROM scratch
COPY . /
USER 65534:65534
EXPOSE 10001
ENTRYPOINT ["/usr/local/bin/mock-upstream"]
CMD ["--listen", "0.0.0.0:10001"]
