"""The type of free-form architecture dicts passed through config files and the CLI.

`dict[str, Any]`, not a bare `dict`: jsonargparse keeps a dotted override of a bare `dict` field
(`--...config.num_hidden_layers 6`) as the string "6", which the model config then refuses; with
`Any` values it reads the override as YAML, so numbers, booleans and lists arrive typed.
"""

from __future__ import annotations

from typing import Any

ConfigDict = dict[str, Any]
