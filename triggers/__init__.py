"""Triggers: turn sustained drift into recorded decisions and signed webhooks.

* :mod:`triggers.policy`: the policy state machine (windows in a row, cooldown, episode ids);
* :mod:`triggers.ledger`: the durable SQLite ledger of decisions and their delivery outbox;
* :mod:`triggers.signing`: Standard Webhooks signatures;
* :mod:`triggers.webhook`: one delivery attempt and what its outcome means;
* :mod:`triggers.stage`: the consuming stage that ties them to ``observer.drift`` and
  ``observer.triggers``.
"""
