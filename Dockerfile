# One image for every part of the lab: the services, the CRL host, the PKI init and the client agent.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CMGLAB_LAB_DIR=/lab
WORKDIR /opt/cmglab
COPY pyproject.toml README.md ./
COPY cmglab ./cmglab
RUN pip install --no-cache-dir '.[postgres]'

VOLUME ["/lab"]
EXPOSE 443 80 10140-10155
ENTRYPOINT ["cmglab"]
CMD ["--help"]
