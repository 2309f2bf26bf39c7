# scope-http-statistics: the static binary alone. Build with `make image`
# (it runs `make static` first); nothing else is needed at run time: the
# eBPF probe is inside the binary, no kernel headers, no compiler.
FROM scratch
COPY dist/scope-http-statistics /scope-http-statistics
ENTRYPOINT ["/scope-http-statistics"]
