"""Run tracking: every submitted run (Argo, KFP) followed to its end.

* :mod:`~observer.triggers.tracking.phases`: the upstream phases and what they mean (one table);
* :mod:`~observer.triggers.tracking.store`: the ledger's ``runs`` and ``run_events``;
* :mod:`~observer.triggers.tracking.tracker`: the polls, transitions, metrics and completion
  webhooks, called by the trigger stage on every tick.
"""
