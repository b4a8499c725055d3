# casefetch: one image for the receiver, the workers, Flower and the demo platform.
# Build: docker build -t casefetch .      Run: see README, "Run with Docker".
# Where no registry is reachable, build on a stand-in base made from Debian packages:
#   deploy/standin/build.sh && docker build --build-arg PYTHON_IMAGE=casefetch-base/python:bookworm .
ARG PYTHON_IMAGE=python:3.12-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 casefetch \
 && useradd --system --uid 10001 --gid casefetch --no-create-home --home-dir /app \
        --shell /usr/sbin/nologin casefetch

WORKDIR /src

# Dependencies in their own layer, rebuilt only when the lock file changes: exactly the
# versions and hashes of requirements.lock (the project's dependencies and Flower).
COPY requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements.lock

# The project itself, as `pip install .` installs it; --no-deps because the lock above
# already holds every dependency, and `pip check` fails the build if one is missing.
COPY pyproject.toml README.md ./
COPY casefetch ./casefetch
COPY casefetch_tools ./casefetch_tools
COPY receiver ./receiver
COPY worker ./worker
RUN pip install --no-deps . \
 && pip check \
 && rm -rf build ./*.egg-info \
 && mkdir -p /archive /app \
 && chown casefetch:casefetch /archive /app

WORKDIR /app
ENV ARCHIVE_DIR=/archive
USER casefetch
EXPOSE 8080

# The receiver's liveness (the image's default command); compose sets each role's own.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD python -c 'import sys, urllib.request; sys.exit(urllib.request.urlopen("http://127.0.0.1:8080/healthz", timeout=4).status != 200)'

CMD ["casefetch", "receiver", "--host", "0.0.0.0", "--port", "8080"]
