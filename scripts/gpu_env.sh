# Sourced by the GPU scripts: the offline GPU machine's Python environment. Wheels in .whl/ (packages the
# machine lacks: pydantic, diffusers, ftfy, ...) go to /tmp/site; the repository itself is on PYTHONPATH.
if [ "${WHEELS:-1}" = 1 ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PY=${PY:-python3}
