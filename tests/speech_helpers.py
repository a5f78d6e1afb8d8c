"""Skips for tests that need the built-in Whisper or the real recordings, which come from packages."""

from __future__ import annotations

import pytest

from slimkit.errors import SlimkitError


def require_built_in_whisper(recordings: bool = True) -> None:
    """Skip unless the built-in tiny.en's source package (and, with `recordings`, pocketsphinx-testdata) is here."""
    from slimkit.speech.audio import POCKETSPHINX
    from slimkit.speech.convert import ct2_source_dir

    try:
        ct2_source_dir()
    except SlimkitError as exc:
        pytest.skip(str(exc))
    if recordings and not POCKETSPHINX.is_dir():
        pytest.skip("Debian package pocketsphinx-testdata not installed")
