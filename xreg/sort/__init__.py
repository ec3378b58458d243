"""One ``xreg sort`` run: ``runner`` (scan, lock, recover, predict, record),
``batch`` (each batch: plan, journal, place, commit), ``placement``
(``plan_moves``, pure, and ``apply_move``, the one place that writes into
OUT), ``record`` (prediction -> layout fields and registry row) and ``scope``
(which folder a body-part decision earns). Submodules are imported on use.
"""
