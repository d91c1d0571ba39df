"""Model conversion: GN -> DGN before training (:mod:`.convert`), DGN -> fixed groupings for inference (:mod:`.freeze`)."""
