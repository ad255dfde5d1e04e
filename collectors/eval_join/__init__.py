"""The eval join stage: late scores joined to their target's segment (``observer eval-join``)."""
