"""Test-wide settings: generic-neuron lists built by the tests go to a temporary folder, not to
the user's cache."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("MKN_GENERIC_CACHE", tempfile.mkdtemp(prefix="mkn-generic-"))
