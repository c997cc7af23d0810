FROM python:3.11-slim
# Extras to install: s3, ssh, video, prescreen (NudeNet on CPU), gpu (torch; use a CUDA base image).
ARG EXTRAS=s3,ssh,video,postgres
WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY horde_scanner ./horde_scanner
COPY local_gpu ./local_gpu
RUN pip install --no-cache-dir -c constraints.txt ".[${EXTRAS}]" && useradd --system scanner \
    && mkdir /data && chown scanner /data
USER scanner
ENV HORDE_SCANNER_STORE__PATH=/data/horde-scanner.db \
    HORDE_SCANNER_SERVER__HOST=0.0.0.0
EXPOSE 14051
ENTRYPOINT ["horde-scanner"]
CMD ["serve"]
