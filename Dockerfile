# One image for every stockstreamer service; docker-compose.yml picks each one's command:
#   python -m services.fetcher | services.api | services.dashboard, and dbmate for the migrations.
# Build from the repository root: docker build -t stockstreamer .

# -- build: a virtualenv with the runtime dependencies, each file checked against its hash -------
# requirements.image.lock pins [project].dependencies (not the `local` and `dev` extras) at
# requirements.lock's versions, with the hashes of every file PyPI has for them (amd64 and arm64
# alike); its first lines say how to regenerate it. --no-deps: the lock is the whole closure.
FROM python:3.11.14-slim-bookworm AS build
WORKDIR /src
COPY requirements.image.lock ./
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
        --require-hashes --no-deps --only-binary :all: -r requirements.image.lock

# -- runtime: the virtualenv and our source, owned by root, run by an unprivileged user -----------
FROM python:3.11.14-slim-bookworm
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin stockstreamer
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# .dockerignore leaves out services/runner (`make run` and its embedded PostgreSQL).
COPY services ./services
COPY db ./db
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001
EXPOSE 8000 5006 9101
