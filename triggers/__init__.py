"""Triggers: turn sustained drift into recorded decisions and signed webhooks.

* :mod:`triggers.policy`: the policy state machine (windows in a row, cooldown, episode ids);
* :mod:`triggers.ledger`: the durable SQLite ledger of decisions, their delivery outbox,
  approvals of held decisions, and the policies' tracker state (restarts resume it);
* :mod:`triggers.signing`: Standard Webhooks signatures;
* :mod:`triggers.webhook`: one delivery attempt and what its outcome means;
* :mod:`triggers.stage`: the consuming stage that ties them to ``observer.drift`` and
  ``observer.triggers``;
* :mod:`triggers.export`: the drifted window and its reference as Parquet;
* :mod:`triggers.argo`, :mod:`triggers.kfp`: retraining runs; :mod:`triggers.pipeline`: the
  rendered WorkflowTemplate and its jobs;
* :mod:`triggers.commands`: ``observer pipeline render``, ``observer triggers
  list|approve|reject``.
"""
