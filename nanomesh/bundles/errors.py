"""The bundle subsystem's error (its own module so every part can import it)."""

from __future__ import annotations

from nanomesh.errors import NanomeshError


class BundleError(NanomeshError):
    """A bundle cannot be packed, stored, extracted or fetched; the message
    names the folder, file, entry or source and says what to do."""
