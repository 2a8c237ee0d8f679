#!/bin/sh
# pip for image builds: chooses where wheels come from, then execs the venv's pip.
#
#   /wheels holds wheels  -> offline: --no-index --find-links /wheels (air-gapped)
#   otherwise             -> the index; WHEEL_INDEX (the matrix row's wheel index,
#                            e.g. PyTorch's cu130 index) is added as an extra index
#
# Certificates and private index settings arrive only as BuildKit secrets, which
# are mounted for the one RUN and never stored in a layer:
#   pip_cert  a CA bundle (corporate proxy, CI)    -> PIP_CERT
#   pip_conf  a pip.conf (index URLs with tokens)  -> PIP_CONFIG_FILE
set -eu

if [ -s /run/secrets/pip_cert ]; then
  export PIP_CERT=/run/secrets/pip_cert
fi
if [ -s /run/secrets/pip_conf ]; then
  export PIP_CONFIG_FILE=/run/secrets/pip_conf
fi
if ls /wheels/*.whl >/dev/null 2>&1; then
  export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels
elif [ -n "${WHEEL_INDEX:-}" ] && [ "${WHEEL_INDEX}" != "https://pypi.org/simple" ]; then
  export PIP_EXTRA_INDEX_URL="${WHEEL_INDEX}"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
exec "${PIP:-/opt/venv/bin/pip}" "$@"
