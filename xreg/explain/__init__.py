"""Why the model said what it said: :mod:`.saliency` (captum attributions and
overlays for one batch) and :mod:`.heatmaps` (overlays for sorted films and
hip pairs, recorded in the registry)."""
