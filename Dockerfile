# The appliance image: the IEC 104 relay. The link manager (`concentrator netd`) needs
# the host's network namespace and CAP_NET_ADMIN, so it runs as its own container or
# service; the relay needs neither and runs unprivileged.
#
# Pinned to the Python release CI tests with; for a reproducible build also pin the
# digest (`docker buildx imagetools inspect python:3.11.7-slim-bookworm`).
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/concentrator

# Dependencies first, from pyproject.toml and the versions CI tested (constraints.txt):
# this layer is rebuilt only when they change. The same steps run in CI without Docker
# (tests/interop/test_image_install.py).
COPY pyproject.toml constraints.txt conf/docker/install.sh ./
RUN sh install.sh dependencies

COPY README.md ./
COPY concentrator ./concentrator
COPY netconfig ./netconfig
COPY monitoring ./monitoring
RUN sh install.sh package \
    && useradd --system --no-create-home --shell /usr/sbin/nologin concentrator

# Metrics listen on 0.0.0.0:9104 in this file, so the published port reaches them.
COPY conf/docker/concentrator.yaml /etc/concentrator/concentrator.yaml

# 2404: IEC 104 toward the BMI; 9104: Prometheus metrics (publish it toward the
# holder's Prometheus only). Both above 1023: no privilege needed.
EXPOSE 2404 9104
USER concentrator

# The configuration is mounted read-only at /etc/concentrator/; a bad file stops the
# container at start with the file, the key and what was expected.
# Healthy while the relay listens on the uplink port of that configuration.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["concentrator", "health", "--config", "/etc/concentrator/concentrator.yaml"]

ENTRYPOINT ["concentrator"]
CMD ["relay", "--config", "/etc/concentrator/concentrator.yaml"]
