"""fsspec storage options from the environment: a JSON object in one variable (credentials,
endpoints, regions), shared by the model store and remote data."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from gdflow.config.errors import GdflowError


def storage_options_from_env(environ: Mapping[str, str], variable: str) -> dict[str, Any]:
    """The fsspec storage options in $`variable` (a JSON object); {} if unset or blank."""
    text = environ.get(variable, "").strip()
    if not text:
        return {}
    try:
        options = json.loads(text)
    except ValueError as exc:  # the value is not repeated: it may hold credentials
        raise GdflowError(
            f"${variable} is not valid JSON ({exc}); set it to a JSON object of fsspec "
            'storage options, e.g. {"client_kwargs": {"region_name": "eu-west-1"}}, or unset it'
        ) from None
    if not isinstance(options, dict):
        raise GdflowError(
            f"${variable} is a JSON {type(options).__name__}, not an object; set it to "
            'a JSON object of fsspec storage options, e.g. {"anon": false}, or unset it'
        )
    return options
