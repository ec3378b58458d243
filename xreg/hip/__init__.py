"""Hip fracture from two views: :mod:`.pairing` (pure: which AP goes with which
lateral) and :mod:`.run` (``xreg hip``: read, pair, join, score, record)."""
