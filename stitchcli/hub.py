"""Reaching the Hugging Face hub: find out once, cheaply, whether it answers at all.

Without a network, huggingface_hub retries every request with back-off for about half a minute and
logs each retry before failing. stitchcli checks the endpoint once per process with a short TCP
connect; when nothing answers it switches the hub libraries to offline mode, so files already in
the local hub cache are still used and anything missing fails at once with stitchcli's own message.
"""

from __future__ import annotations

import os
import socket
import sys
from urllib.parse import urlparse

_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
_checked: bool | None = None


def offline_mode() -> bool:
    """Tell whether the user (or stitchcli) put the hub libraries in offline mode."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in _OFFLINE_VARIABLES)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Tell whether a TCP connection to the hub endpoint ($HF_ENDPOINT or huggingface.co) opens in time."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def prefer_offline_when_unreachable() -> bool:
    """Switch the hub libraries to offline mode if the hub does not answer; give True when offline.

    Checked once per process. Libraries already imported read their offline flag at import time,
    so their module-level copies are updated too.
    """
    global _checked
    if offline_mode():
        return True
    if _checked is None:
        _checked = hub_reachable()
    if _checked:
        return False
    for variable in _OFFLINE_VARIABLES:
        os.environ[variable] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        datasets_config.HF_HUB_OFFLINE = True
        datasets_config.HF_DATASETS_OFFLINE = True
    return True
