# The appliance image: the IEC 104 relay. The link manager (`concentrator netd`) needs
# the host's network namespace and CAP_NET_ADMIN, so it runs as its own container or
# service; the relay needs neither and runs unprivileged.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

WORKDIR /opt/concentrator
COPY pyproject.toml README.md ./
COPY concentrator ./concentrator
COPY netconfig ./netconfig
COPY monitoring ./monitoring
RUN pip install --no-compile . \
    && useradd --system --no-create-home --shell /usr/sbin/nologin concentrator

COPY conf/concentrator.yaml /etc/concentrator/concentrator.yaml

# 2404: IEC 104 toward the BMI; 9104: Prometheus metrics. Binding 2404 as non-root
# works because it is above 1023.
EXPOSE 2404 9104
USER concentrator

# The configuration is mounted read-only at /etc/concentrator/; a bad file stops the
# container at start with the file, the key and what was expected.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD python -c "import socket,sys; s=socket.create_connection(('127.0.0.1', 2404), 2); s.close()" || exit 1

ENTRYPOINT ["concentrator"]
CMD ["relay", "--config", "/etc/concentrator/concentrator.yaml"]
