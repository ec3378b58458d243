"""The SQLite registry of a sorted folder: runs, images, sources, hip studies, reviews.

``core`` holds the connection and what a sort run writes; ``browse`` the
read-only queries a person browses with (counts, gallery, one image);
``reviews`` the human decisions, kept beside what the model said, never
over it; ``export`` the CSV/JSON/manifest writers.
"""

from xreg.registry.core import (
    IMAGE_FIELDS,
    SCHEMA_VERSION,
    ImageRecord,
    Pseudonymiser,
    Registry,
    StoredImage,
)

__all__ = ["IMAGE_FIELDS", "SCHEMA_VERSION", "ImageRecord", "Pseudonymiser", "Registry",
           "StoredImage"]
