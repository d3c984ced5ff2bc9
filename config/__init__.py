"""One place for every environment variable speechq reads."""

from config.settings import KeyPolicy, Settings, SettingsError, get_settings, load_settings

__all__ = ["KeyPolicy", "Settings", "SettingsError", "get_settings", "load_settings"]
