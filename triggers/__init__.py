"""Triggers: turn sustained drift into recorded decisions and signed webhooks.

* :mod:`observer.triggers.policy`: the policy state machine (windows in a row, cooldown, episode ids);
* :mod:`observer.triggers.ledger`: the durable SQLite ledger of decisions, their delivery outbox,
  approvals of held decisions, and the policies' tracker state (restarts resume it);
* :mod:`observer.triggers.action`: the ``Action`` protocol and the registry of actions by name;
* :mod:`observer.triggers.retry`: the one retry policy of every action (backoff, Retry-After,
  the dead letter after ``max_attempts``);
* :mod:`observer.triggers.signing`: Standard Webhooks signatures;
* :mod:`observer.triggers.webhook`: the ``webhook`` action: one signed attempt and what its
  answer means;
* :mod:`observer.triggers.stage`: the consuming stage that ties them to ``observer.drift`` and
  ``observer.triggers``;
* :mod:`observer.triggers.export`: the drifted window and its reference as Parquet;
* :mod:`observer.triggers.runs`: a retraining run's payload and parameters;
  :mod:`observer.triggers.argo`, :mod:`observer.triggers.kfp`: the ``argo`` and ``kfp``
  actions that start it; :mod:`observer.triggers.pipeline`: the rendered WorkflowTemplate and
  its jobs;
* :mod:`observer.triggers.commands`: ``observer pipeline render``, ``observer triggers
  list|approve|reject``.
"""
