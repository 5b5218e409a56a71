"""One exception type for every mistake a user can make, each message saying what to do."""


class UniversalityError(RuntimeError):
    """A bad input or an unusable environment, with a message that says how to fix it."""


class OfflineError(UniversalityError):
    """Something needs the Hugging Face hub (or another download) and the machine is offline."""


class IntegrityError(UniversalityError):
    """A file on disk does not match the hash recorded for it (corrupt or edited checkpoint)."""


class StreamMismatchError(UniversalityError):
    """Two token streams that must be identical (same tokens for both models) are not."""
