"""Model configs: every key (fields), the heads of a model, and the two JSON layouts.

Importing the package registers the original's multi-head ("cerberus") layout with
``Config.load``, so a config file in either layout loads through the one class.
"""

from unetsl.config import cerberus_layout as _cerberus_layout  # noqa: F401  (registers)
from unetsl.config.fields import FIELDS, check_value
from unetsl.config.model_config import Config, parse_overrides

__all__ = ["FIELDS", "Config", "check_value", "parse_overrides"]
