"""One error type for user mistakes, so the CLI can print one line instead of a traceback."""


class ConfigError(ValueError):
    """A bad value in the user's configuration or command line; the message names it and what is allowed."""


def require(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless condition holds."""
    if not condition:
        raise ConfigError(message)
