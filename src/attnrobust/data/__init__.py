"""Datasets (being split into one file per concern; see loader.py for now)."""

from attnrobust.data.loader import *  # noqa: F401,F403
from attnrobust.data.loader import (  # noqa: F401
    _decoded_path, _embedded_path, _read_decoded, _to_nchw, _user_dataset,
)
