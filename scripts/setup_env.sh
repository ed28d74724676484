# Sourced by the job scripts: Fashion-MNIST from Debian's package when it is not there yet (qtvit falls back to a
# download otherwise), then the virtual environment with the package and the extras in $QTVIT_EXTRAS (torch and
# torchvision pinned together by constraints.txt), activated.
if [ ! -r /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] && command -v apt-get >/dev/null; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist; } \
        >/dev/null || echo "setup: could not install dataset-fashion-mnist with apt-get; qtvit will try to download" \
                           "Fashion-MNIST" >&2
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
. .venv/bin/activate
pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[${QTVIT_EXTRAS:-train}]"
# qt's fused CPU kernel (inference), built once here rather than by every training process at the same moment (a
# failed build leaves qt on its eager path, as the warning says); QTVIT_NO_CPP=1: not built, not used
if [ "${QTVIT_NO_CPP:-0}" != 1 ]; then
    qtvit build-ext || true
fi
