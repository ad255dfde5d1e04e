"""Triggers: turn sustained drift into recorded decisions and signed webhooks.

* :mod:`observer.triggers.policy`: the policy state machine (windows in a row, cooldown, episode ids);
* :mod:`observer.triggers.ledger`: the durable SQLite ledger of decisions, their delivery outbox,
  approvals of held decisions, and the policies' tracker state (restarts resume it);
* :mod:`observer.triggers.signing`: Standard Webhooks signatures;
* :mod:`observer.triggers.webhook`: one delivery attempt and what its outcome means;
* :mod:`observer.triggers.stage`: the consuming stage that ties them to ``observer.drift`` and
  ``observer.triggers``;
* :mod:`observer.triggers.export`: the drifted window and its reference as Parquet;
* :mod:`observer.triggers.argo`, :mod:`observer.triggers.kfp`: retraining runs; :mod:`observer.triggers.pipeline`: the
  rendered WorkflowTemplate and its jobs;
* :mod:`observer.triggers.commands`: ``observer pipeline render``, ``observer triggers
  list|approve|reject``.
"""
