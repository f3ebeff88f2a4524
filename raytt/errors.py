"""Error types: every refusal raytt makes is a RayttError whose message names the file/field and the problem."""


class RayttError(Exception):
    """Base class; the CLI prints these as one clear line and exits with `exit_code`, no traceback."""

    exit_code = 2


class ConfigError(RayttError):
    """A config file or override is malformed (unknown key, wrong type, bad value)."""


class BankError(RayttError):
    """A bank directory or the vectors written into it break the bank contract."""


class ShardError(RayttError):
    """Sequence shards are malformed, or were built against another bank."""


class GateError(RayttError):
    """A data gate refused the input: leaked splits, too little data, misaligned vectors."""


class Interrupted(RayttError):
    """The user stopped a run (Ctrl-C); it can be resumed."""

    exit_code = 130
