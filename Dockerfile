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
# Healthy while the relay listens on 2404. Read from /proc rather than by connecting:
# a connection from 127.0.0.1 would be refused by the allowlist and logged every time.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD python -c "import sys; rows = open('/proc/net/tcp').read().split(chr(10))[1:] + open('/proc/net/tcp6').read().split(chr(10))[1:]; sys.exit(0 if any(r.split()[1].endswith(':0964') and r.split()[3] == '0A' for r in rows if r.strip()) else 1)"

ENTRYPOINT ["concentrator"]
CMD ["relay", "--config", "/etc/concentrator/concentrator.yaml"]
