"""The one exception type for bad user input: the CLI prints its message on one line, exit 2."""


class DlmError(ValueError):
    """A problem with the user's input (file, config value, prompt, checkpoint) and its fix."""
